"""Tenant configuration, read once: each tenant's private connectors and its safety policy.

    grammars/policy.yaml           the default policy (every tenant, every DSL)
    grammars/tenants/<t>.yaml      tenant: <t>, dsl: <dsl>, catalog: {connectors...}, policy: {...overrides}

The catalog part becomes the tenant's variant of the DSL (:mod:`service.grammars.registry`); the policy part
is what :mod:`service.safety` applies to that tenant's requests and outputs, whatever DSL they use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from service.policy import Policy

__all__ = ["TenantConfig", "TenantConfigs"]


@dataclass(frozen=True)
class TenantConfig:
    tenant: str
    #: The DSL the private connectors extend (None: a policy only).
    dsl: str | None
    #: The ``catalog:`` section as written (types come from the DSL's own catalog).
    catalog: dict[str, Any]
    policy: Policy
    source: str


@dataclass(frozen=True)
class TenantConfigs:
    default_policy: Policy = field(default_factory=Policy)
    tenants: dict[str, TenantConfig] = field(default_factory=dict)

    @classmethod
    def load(cls, grammars_dir: Path) -> TenantConfigs:
        path = Path(grammars_dir) / "policy.yaml"
        default = Policy.from_dict(yaml.safe_load(path.read_text()) or {}) if path.exists() else Policy()
        tenants = {}
        for tenant_file in sorted((Path(grammars_dir) / "tenants").glob("*.yaml")):
            meta = yaml.safe_load(tenant_file.read_text()) or {}
            tenant = str(meta["tenant"])
            tenants[tenant] = TenantConfig(
                tenant=tenant,
                dsl=str(meta["dsl"]) if meta.get("dsl") else None,
                catalog=dict(meta.get("catalog") or {}),
                policy=Policy.from_dict(meta.get("policy") or {}, base=default),
                source=tenant_file.name,
            )
        return cls(default, tenants)

    def policy(self, tenant: str | None) -> Policy:
        """The policy a tenant's requests run under (the default for tenants without a file, and for none)."""
        config = self.tenants.get(tenant or "")
        return config.policy if config else self.default_policy

    def with_catalogs(self, dsl: str) -> list[TenantConfig]:
        """Tenants with private connectors for ``dsl``."""
        return [c for c in self.tenants.values() if c.dsl == dsl and c.catalog]
