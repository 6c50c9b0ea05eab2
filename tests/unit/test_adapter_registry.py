"""Adapter registry: manifests, tenant -> adapter, base-model compatibility, stable ids (no engine)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import yaml

from service.adapters import AdapterRegistry
from service.errors import AdapterUnavailable, BadRequest, UnknownAdapter

FP = "0123456789abcdef"


def _adapter(root: Path, name: str, *, dsl="flow", tenants=("*",), fingerprint=FP, rank=8, weights=b"w") -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
    _write_weights(folder, weights)
    manifest = {"name": name, "dsl": dsl, "tenants": list(tenants), "rank": rank,
                "base_model": {"id": "test-base", "fingerprint": fingerprint}}
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return folder


def _write_weights(folder: Path, seed: bytes) -> None:
    """A real (tiny) safetensors file whose content depends on ``seed``."""
    (folder / "adapter_model.safetensors").write_bytes(safetensors.numpy.save({"w": np.frombuffer(seed, np.uint8)}))


@pytest.fixture()
def registry(tmp_path):
    _adapter(tmp_path, "flow-general")
    _adapter(tmp_path, "contoso", tenants=("contoso",))
    _adapter(tmp_path, "sql-general", dsl="sql")
    _adapter(tmp_path, "other-base", fingerprint="ffffffffffffffff", tenants=("fabrikam",))
    return AdapterRegistry(tmp_path, base_fingerprint=FP, max_rank=16).load()


def test_tenant_gets_its_own_adapter_others_get_the_shared_one(registry):
    assert registry.resolve(dsl="flow", tenant="contoso").name == "contoso"
    assert registry.resolve(dsl="flow", tenant="acme").name == "flow-general"
    assert registry.resolve(dsl="flow").name == "flow-general"
    assert registry.resolve(dsl="sql", tenant="contoso").name == "sql-general"


def test_base_and_explicit_adapter(registry):
    assert registry.resolve(dsl="flow", adapter="base") is None
    assert registry.resolve(dsl="flow", adapter="contoso").name == "contoso"
    with pytest.raises(UnknownAdapter):
        registry.resolve(dsl="flow", adapter="nope")
    with pytest.raises(BadRequest):
        registry.resolve(dsl="flow", adapter="sql-general")  # made for another DSL


def test_adapter_for_another_base_is_refused_with_the_reason(registry):
    adapter = next(a for a in registry.all() if a.name == "other-base")
    assert adapter.error and "ffffffffffffffff" in adapter.error and FP in adapter.error
    with pytest.raises(AdapterUnavailable):
        registry.resolve(dsl="flow", adapter="other-base")
    # fabrikam's own adapter is broken: say so instead of silently serving another adapter
    with pytest.raises(AdapterUnavailable):
        registry.resolve(dsl="flow", tenant="fabrikam")


def test_a_broken_shared_adapter_is_skipped_not_fatal(tmp_path):
    _adapter(tmp_path, "a-broken", fingerprint="ffffffffffffffff")
    _adapter(tmp_path, "b-good")
    registry = AdapterRegistry(tmp_path, base_fingerprint=FP, max_rank=16).load()
    assert registry.resolve(dsl="flow").name == "b-good"


def test_missing_files_and_too_high_rank_are_reported(tmp_path):
    _adapter(tmp_path, "big", rank=64)
    (tmp_path / "empty").mkdir()
    registry = AdapterRegistry(tmp_path, base_fingerprint=FP, max_rank=16).load()
    errors = {a.name: a.error for a in registry.all()}
    assert "rank 64" in errors["big"]
    assert "manifest.yaml" in errors["empty"] and "adapter_config.json" in errors["empty"]


def test_lora_ids_are_stable_unique_and_change_with_the_weights(tmp_path):
    _adapter(tmp_path, "a")
    _adapter(tmp_path, "b")
    first = {a.name: a.lora_id for a in AdapterRegistry(tmp_path, base_fingerprint=FP, max_rank=16).load().all()}
    again = {a.name: a.lora_id for a in AdapterRegistry(tmp_path, base_fingerprint=FP, max_rank=16).load().all()}
    assert first == again and first["a"] != first["b"] and all(i > 0 for i in first.values())
    _write_weights(tmp_path / "a", b"new weights")
    updated = AdapterRegistry(tmp_path, base_fingerprint=FP, max_rank=16).load()
    assert next(a for a in updated.all() if a.name == "a").lora_id != first["a"]


def test_weights_cut_short_make_the_adapter_unavailable_with_the_reason(tmp_path):
    folder = _adapter(tmp_path, "cut", tenants=("acme",), weights=b"x" * 4096)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    registry = AdapterRegistry(tmp_path, base_fingerprint=FP, max_rank=16).load()
    with pytest.raises(AdapterUnavailable, match="cut short"):
        registry.resolve(dsl="flow", tenant="acme")
