"""Adapter registry: manifests, tenant -> adapter, base-model compatibility, stable ids (no engine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.adapters import AdapterRegistry, BaseShapes
from service.errors import AdapterUnavailable, BadRequest, UnknownAdapter
from service.security import Caller
from tests.helpers import SMOLLM2, write_fake_adapter, write_fake_weights

ADMIN = Caller("admin", admin=True)
FP = "0123456789abcdef"
BASE = BaseShapes(**SMOLLM2)


def _adapter(root: Path, name: str, *, dsl="flow", tenants=("*",), fingerprint=FP, rank=8, weights=b"w") -> Path:
    return write_fake_adapter(root, name, fingerprint=fingerprint, dsl=dsl, tenants=tenants, rank=rank,
                              weights=weights)


@pytest.fixture()
def registry(tmp_path):
    _adapter(tmp_path, "flow-general")
    _adapter(tmp_path, "contoso", tenants=("contoso",))
    _adapter(tmp_path, "sql-general", dsl="sql")
    _adapter(tmp_path, "other-base", fingerprint="ffffffffffffffff", tenants=("fabrikam",))
    return AdapterRegistry(tmp_path, base_fingerprint=FP, base=BASE, max_rank=16).load()


def test_tenant_gets_its_own_adapter_others_get_the_shared_one(registry):
    assert registry.resolve(ADMIN, dsl="flow", tenant="contoso").name == "contoso"
    assert registry.resolve(ADMIN, dsl="flow", tenant="acme").name == "flow-general"
    assert registry.resolve(ADMIN, dsl="flow").name == "flow-general"
    assert registry.resolve(ADMIN, dsl="sql", tenant="contoso").name == "sql-general"


def test_base_and_explicit_adapter(registry):
    assert registry.resolve(ADMIN, dsl="flow", name="base") is None
    assert registry.resolve(ADMIN, dsl="flow", name="contoso").name == "contoso"
    with pytest.raises(UnknownAdapter):
        registry.resolve(ADMIN, dsl="flow", name="nope")
    with pytest.raises(BadRequest):
        registry.resolve(ADMIN, dsl="flow", name="sql-general")  # made for another DSL


def test_another_tenants_adapter_is_unknown_to_a_tenant_whatever_is_asked(registry):
    fabrikam = Caller("f", tenant="fabrikam")
    for name, dsl in (("contoso", "flow"), ("contoso", "sql"), ("nope", "flow")):
        with pytest.raises(UnknownAdapter) as unknown:
            registry.resolve(fabrikam, dsl=dsl, tenant="fabrikam", name=name)
        assert unknown.value.message == f"unknown adapter {name!r}; GET /adapters lists yours"
    assert {a.name for a in registry.usable(fabrikam)} == {"flow-general", "sql-general", "other-base"}
    assert {a.name for a in registry.usable(Caller("anyone"))} == {"flow-general", "sql-general"}


def test_adapter_for_another_base_is_refused_with_the_reason(registry):
    adapter = next(a for a in registry.all() if a.name == "other-base")
    assert adapter.error and "ffffffffffffffff" in adapter.error and FP in adapter.error
    with pytest.raises(AdapterUnavailable):
        registry.resolve(ADMIN, dsl="flow", name="other-base")
    # fabrikam's own adapter is broken: say so instead of silently serving another adapter
    with pytest.raises(AdapterUnavailable):
        registry.resolve(ADMIN, dsl="flow", tenant="fabrikam")


def test_a_broken_shared_adapter_is_skipped_not_fatal(tmp_path):
    _adapter(tmp_path, "a-broken", fingerprint="ffffffffffffffff")
    _adapter(tmp_path, "b-good")
    registry = AdapterRegistry(tmp_path, base_fingerprint=FP, base=BASE, max_rank=16).load()
    assert registry.resolve(ADMIN, dsl="flow").name == "b-good"


def test_missing_files_and_too_high_rank_are_reported(tmp_path):
    _adapter(tmp_path, "big", rank=64)
    (tmp_path / "empty").mkdir()
    registry = AdapterRegistry(tmp_path, base_fingerprint=FP, base=BASE, max_rank=16).load()
    errors = {a.name: a.error for a in registry.all()}
    assert "rank 64" in errors["big"]
    assert "manifest.yaml" in errors["empty"] and "adapter_config.json" in errors["empty"]


def test_lora_ids_are_made_by_the_registry_unique_stable_and_new_for_new_weights(tmp_path):
    _adapter(tmp_path, "a")
    _adapter(tmp_path, "b", weights=b"w")  # the same weights as "a": still another adapter, another id
    registry = AdapterRegistry(tmp_path, base_fingerprint=FP, base=BASE, max_rank=16).load()
    first = {a.name: a.lora_id for a in registry.all()}
    assert first["a"] != first["b"] and all(i > 0 for i in first.values())
    assert {a.name: a.lora_id for a in registry.load().all()} == first  # a rescan keeps them
    write_fake_weights(tmp_path / "a", b"new weights")
    updated = {a.name: a.lora_id for a in registry.load().all()}
    assert updated["a"] not in first.values() and updated["b"] == first["b"]


def test_an_adapter_the_engine_refused_is_quarantined_with_the_reason_and_never_served_again(registry):
    contoso = registry.resolve(ADMIN, dsl="flow", tenant="contoso")
    registry.quarantine(contoso, "the engine could not load it on this replica")
    with pytest.raises(AdapterUnavailable, match="could not load"):
        registry.resolve(ADMIN, dsl="flow", tenant="contoso")
    listed = next(a for a in registry.usable(Caller("c", tenant="contoso")) if a.name == "contoso")
    assert listed.error == "the engine could not load it on this replica"
    assert next(a for a in registry.load().all() if a.name == "contoso").error  # a rescan does not clear it


def test_weights_cut_short_make_the_adapter_unavailable_with_the_reason(tmp_path):
    folder = _adapter(tmp_path, "cut", tenants=("acme",), weights=b"x" * 4096)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    registry = AdapterRegistry(tmp_path, base_fingerprint=FP, base=BASE, max_rank=16).load()
    with pytest.raises(AdapterUnavailable, match="cut short"):
        registry.resolve(ADMIN, dsl="flow", tenant="acme")
