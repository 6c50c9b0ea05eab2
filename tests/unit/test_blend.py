"""nl2dsl blend: a tenant adapter pulled part of the way back toward the general adapter it was trained from."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from service.training.blend import blend

NAMES = ["base_model.model.layers.0.q_proj.lora_A.weight", "base_model.model.layers.0.q_proj.lora_B.weight"]


def _adapter(folder, value: float, *, rank: int = 4):
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 2 * rank,
                                                             "target_modules": ["q_proj"]}))
    save_file({n: torch.full((rank, 8), value) for n in NAMES}, folder / "adapter_model.safetensors")
    (folder / "manifest.yaml").write_text(yaml.safe_dump({"name": folder.name, "dsl": "flow", "tenants": ["t"]}))
    return folder


def test_blend_interpolates_every_tensor_and_records_its_inputs(tmp_path):
    general, tuned = _adapter(tmp_path / "general", 1.0), _adapter(tmp_path / "tuned", 3.0)
    out = blend(tuned, general, tmp_path / "tenant", keep=0.25)
    weights = load_file(out / "adapter_model.safetensors")
    assert all(torch.allclose(weights[n], torch.full((4, 8), 1.5)) for n in NAMES)
    manifest = yaml.safe_load((out / "manifest.yaml").read_text())
    assert manifest["name"] == "tenant" and manifest["tenants"] == ["t"]
    assert manifest["blend"]["keep"] == 0.25
    assert manifest["blend"]["tuned"]["name"] == "tuned" and manifest["blend"]["general"]["name"] == "general"


def test_blend_refuses_adapters_that_do_not_share_a_shape_or_its_own_inputs(tmp_path):
    general, tuned = _adapter(tmp_path / "general", 1.0), _adapter(tmp_path / "tuned", 3.0, rank=8)
    with pytest.raises(ValueError, match="differ in r"):
        blend(tuned, general, tmp_path / "out", keep=0.5)
    with pytest.raises(ValueError, match="new folder"):
        blend(general, general, general, keep=0.5)
    with pytest.raises(ValueError, match="within"):
        blend(general, general, tmp_path / "out", keep=1.5)
