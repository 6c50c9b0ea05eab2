"""API keys -> tenant, and what a tenant may use.

The keys file (``NL2DSL_API_KEYS_FILE``, YAML, mounted from a Secret) stores SHA-256 digests, never keys::

    keys:
      - sha256: 5e8848...          # `nl2dsl keys hash <key>` prints it
        tenant: contoso
        dsls: [flow]               # optional: the DSLs this key may use (default: all)
      - sha256: 2c26b4...
        admin: true                # manages adapters and grammars; may act for any tenant

Requests send ``Authorization: Bearer <key>`` (or ``X-API-Key: <key>``). No key or an unknown one is a 401;
a tenant's key that names another tenant, another tenant's adapter or a DSL it may not use is a 403.
Keys never reach logs or metrics: a principal carries only the first 8 hex digits of its key's digest.
``NL2DSL_AUTH=off`` is the local development mode (every caller an admin); ``make serve`` sets it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml
from starlette.requests import Request

from service.adapters import Adapter
from service.errors import Forbidden, Unauthorized

__all__ = ["DEVELOPER", "KeyStore", "Principal", "hash_key"]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant's key, or an admin (tenant None)."""

    key_id: str
    tenant: str | None = None
    admin: bool = False
    #: The DSLs this key may use; None = all.
    dsls: frozenset[str] | None = None

    def tenant_for(self, requested: str | None) -> str | None:
        """The tenant a request runs as: the key's own; an admin may name any."""
        if self.admin:
            return requested if requested is not None else self.tenant
        if requested is not None and requested != self.tenant:
            raise Forbidden(f"this API key belongs to tenant {self.tenant!r}, not {requested!r}",
                            detail={"tenant": requested})
        return self.tenant

    def check_dsl(self, dsl: str) -> None:
        if not self.admin and self.dsls is not None and dsl not in self.dsls:
            raise Forbidden(f"this API key may not use the DSL {dsl!r}", detail={"dsl": dsl})

    def check_adapter(self, adapter: Adapter | None) -> None:
        """A tenant may use its own adapters, shared ones and the base model (None)."""
        if adapter is None or self.admin or adapter.shared or self.tenant in adapter.tenants:
            return
        raise Forbidden(f"adapter {adapter.name!r} belongs to another tenant", detail={"adapter": adapter.name})

    def require_admin(self) -> None:
        if not self.admin:
            raise Forbidden("this operation needs an admin API key")


#: The caller in development mode (``NL2DSL_AUTH=off``).
DEVELOPER = Principal(key_id="dev", admin=True)


class KeyStore:
    """Digests of the valid keys and what each may do."""

    def __init__(self, principals: dict[str, Principal]) -> None:
        self._by_digest = principals

    @classmethod
    def from_file(cls, path: Path | None) -> KeyStore:
        if path is None:
            return cls({})
        entries = (yaml.safe_load(Path(path).read_text()) or {}).get("keys") or []
        principals = {}
        for number, entry in enumerate(entries, start=1):
            digest = str(entry.get("sha256", "")).lower()
            if len(digest) != 64 or not (entry.get("tenant") or entry.get("admin")):
                raise ValueError(f"{path}: key {number} needs a 64-hex sha256 and a tenant or admin: true")
            dsls = entry.get("dsls")
            principals[digest] = Principal(
                key_id=digest[:8],
                tenant=entry.get("tenant"),
                admin=bool(entry.get("admin", False)),
                dsls=frozenset(dsls) if dsls is not None else None,
            )
        return cls(principals)

    def __len__(self) -> int:
        return len(self._by_digest)

    def authenticate(self, request: Request) -> Principal:
        """The principal of the request's key; Unauthorized (401) when there is none or it is unknown."""
        key = _presented_key(request)
        if not key:
            raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'",
                               headers={"WWW-Authenticate": "Bearer"})
        principal = self._by_digest.get(hash_key(key))
        if principal is None:
            raise Unauthorized("unknown API key", headers={"WWW-Authenticate": "Bearer"})
        return principal


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-api-key") or None
