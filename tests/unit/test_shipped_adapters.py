"""The adapters shipped in adapters/ are made for the embedded base and can be served (no engine needed)."""

from __future__ import annotations

from service.adapters import AdapterRegistry, BaseShapes
from service.config import Settings
from service.model import base_fingerprint, resolve_model
from service.security import Caller

ADMIN = Caller("admin", admin=True)
SHIPPED = {"flow-general": ("flow", ["*"]), "sql-general": ("sql", ["*"]), "contoso": ("flow", ["contoso"]),
           "fabrikam": ("flow", ["fabrikam"])}


def test_the_four_adapters_ship_for_the_embedded_base_and_each_tenant_gets_its_own():
    settings = Settings()
    model = resolve_model(None, settings.cache_dir)
    registry = AdapterRegistry(settings.adapters_dir, base_fingerprint=base_fingerprint(model),
                               base=BaseShapes.of(model), max_rank=settings.max_lora_rank).load()
    adapters = {a.name: a for a in registry.all()}
    assert set(SHIPPED) <= set(adapters)
    for name, (dsl, tenants) in SHIPPED.items():
        adapter = adapters[name]
        assert adapter.error is None, adapter.error
        assert (adapter.dsl, list(adapter.tenants)) == (dsl, tenants)
        assert (adapter.path / "adapter_model.safetensors").stat().st_size < 25 * 2**20
        training = adapter.manifest["training"]
        assert training["last_loss"] < training["first_loss"] and training["wall_time_s"] > 0
    assert registry.resolve(ADMIN, dsl="flow", tenant="contoso").name == "contoso"
    assert registry.resolve(ADMIN, dsl="flow", tenant="fabrikam").name == "fabrikam"
    assert registry.resolve(ADMIN, dsl="flow", tenant="acme").name == "flow-general"
    assert registry.resolve(ADMIN, dsl="sql", tenant="contoso").name == "sql-general"
