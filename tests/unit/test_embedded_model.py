"""The embedded model's converted folder: readable by a user other than the one who converted it (the image
converts as root at build time and serves as uid 10001)."""

from __future__ import annotations

import service.model as model


def test_the_converted_model_is_readable_by_every_user(tmp_path, monkeypatch):
    def convert(gguf, out, *, progress):  # what save_pretrained leaves: safetensors writes 0600
        out.mkdir(parents=True)
        for name, mode in (("config.json", 0o644), ("model.safetensors", 0o600)):
            (out / name).write_text("{}")
            (out / name).chmod(mode)

    monkeypatch.setattr(model, "find_gguf", lambda: tmp_path / "SmolLM2.gguf")
    monkeypatch.setattr(model, "_convert_gguf", convert)

    folder = model.embedded_model_dir(tmp_path / "cache", progress=False)

    assert folder == tmp_path / "cache" / "models" / model.EMBEDDED_NAME
    assert {f.name: f.stat().st_mode & 0o777 for f in folder.iterdir()} == {"config.json": 0o644,
                                                                            "model.safetensors": 0o644}
    assert model.embedded_model_dir(tmp_path / "cache", progress=False) == folder  # converted once
