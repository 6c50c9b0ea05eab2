"""Pull a tenant adapter part of the way back toward the general adapter it was trained from.

A tenant adapter continues from the general one (``nl2dsl train --init-from``) and drifts a little on general
requests while it learns the tenant's connectors. Interpolating the weights, ``general + keep * (tuned -
general)`` (weight-space ensembling, as in WiSE-FT), keeps ``keep`` of that change: most of the tenant skill,
less of the drift. ``nl2dsl blend`` writes the result as a new adapter with the lineage in its manifest.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import yaml

__all__ = ["blend"]

WEIGHTS = "adapter_model.safetensors"


def blend(tuned: Path, general: Path, out: Path, *, keep: float) -> Path:
    """Write ``general + keep * (tuned - general)`` for every LoRA tensor of ``tuned`` to ``out``."""
    from safetensors.torch import load_file, save_file

    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep must be within [0, 1], not {keep}")
    if Path(out).resolve() in (Path(tuned).resolve(), Path(general).resolve()):
        raise ValueError("write the blend to a new folder: its inputs are needed to reproduce it")
    tuned_config = json.loads((tuned / "adapter_config.json").read_text())
    general_config = json.loads((general / "adapter_config.json").read_text())
    for key in ("r", "lora_alpha", "target_modules"):
        if _comparable(tuned_config.get(key)) != _comparable(general_config.get(key)):
            raise ValueError(f"adapters differ in {key}: {tuned_config.get(key)} vs {general_config.get(key)}")
    tuned_weights, general_weights = load_file(tuned / WEIGHTS), load_file(general / WEIGHTS)
    if tuned_weights.keys() != general_weights.keys():
        raise ValueError("adapters hold different tensors; was the tuned one trained --init-from the general one?")
    blended = {name: general_weights[name] + keep * (w - general_weights[name]) for name, w in tuned_weights.items()}

    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(tuned / "adapter_config.json", out / "adapter_config.json")
    save_file(blended, out / WEIGHTS)
    manifest = yaml.safe_load((tuned / "manifest.yaml").read_text())
    manifest["name"] = out.name
    manifest["blend"] = {
        "keep": keep,
        "tuned": {"name": tuned.name, "sha256": _digest(tuned / WEIGHTS)},
        "general": {"name": general.name, "sha256": _digest(general / WEIGHTS)},
    }
    (out / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    if (tuned / "training_log.json").exists():
        shutil.copy(tuned / "training_log.json", out / "training_log.json")
    return out


def _comparable(value):
    return sorted(value) if isinstance(value, list) else value  # peft writes target_modules in set order


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
