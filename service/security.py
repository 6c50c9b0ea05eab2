"""API keys -> the caller (tenant and rights).

The keys file (``NL2DSL_API_KEYS_FILE``, YAML, mounted from a Secret) stores SHA-256 digests, never keys::

    keys:
      - sha256: 5e8848...          # `nl2dsl keys hash <key>` prints it
        tenant: contoso
        dsls: [flow]               # optional: the DSLs this key may use (default: all)
      - sha256: 2c26b4...
        admin: true                # manages adapters and grammars; may act for any tenant

Requests send ``Authorization: Bearer <key>`` (or ``X-API-Key: <key>``). No key or an unknown one is a 401;
a tenant's key that names another tenant, a DSL it may not use or an admin operation is a 403.
The file is read again when it changes (a revoked key stops working within about a second, no restart).
Keys never reach logs or metrics: a caller carries only the first 8 hex digits of its key's digest.

One access rule covers everything tenants own (DSL uploads, adapters, onboarding runs): a thing *serves* a
tenant's requests when it is shared (owner None: shipped, or an admin's) or the tenant is among its owners
(:func:`serves`); a caller *may use* what serves the tenant it acts as, an admin everything
(:meth:`Caller.may_use`); a caller *may manage* (see, change, delete) only its tenant's own things, an admin
any (:meth:`Caller.may_manage`).
``NL2DSL_AUTH=off`` is the local development mode (every caller :data:`DEVELOPER`); ``make serve`` sets it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service import safe_yaml
from service.errors import Forbidden, Unauthorized
from service.names import NAME_PATTERN

__all__ = ["DEVELOPER", "Caller", "KeyEntry", "KeyStore", "hash_key", "presented_key", "serves"]

log = logging.getLogger("nl2dsl.security")

#: How often (seconds) the keys file is looked at for changes.
_RELOAD_CHECK_S = 1.0


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def serves(owners: Collection[str | None], tenant: str | None) -> bool:
    """Whether a thing owned by ``owners`` is for ``tenant``'s requests: it is shared (None among its owners) or
    the tenant is one of them. The access rule without an admin's rights."""
    return None in owners or (tenant is not None and tenant in owners)


@dataclass(frozen=True)
class Caller:
    """Who is calling: a tenant's key, or an admin (who may act as any tenant)."""

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

    def may_use(self, owners: Collection[str | None], *, tenant: str | None = None) -> bool:
        """Whether the caller may use a thing owned by ``owners``, acting as ``tenant`` (default: its own)."""
        return self.admin or serves(owners, tenant if tenant is not None else self.tenant)

    def may_manage(self, owner: str | None) -> bool:
        """Whether the caller may see, change or delete what ``owner`` owns privately (an onboarding run, the
        history of an upload): its own tenant's, or anything for an admin."""
        return self.admin or (owner is not None and owner == self.tenant)

    def may_use_dsl(self, dsl: str) -> bool:
        return self.admin or self.dsls is None or dsl in self.dsls

    def check_dsl(self, dsl: str) -> None:
        if not self.may_use_dsl(dsl):
            raise Forbidden(f"this API key may not use the DSL {dsl!r}", detail={"dsl": dsl})

    def require_admin(self) -> None:
        if not self.admin:
            raise Forbidden("this operation needs an admin API key")


#: The caller in development mode (``NL2DSL_AUTH=off``): handed out by the auth middleware, never a default.
DEVELOPER = Caller(key_id="dev", admin=True)


class KeyStore:
    """Digests of the valid keys and what each may do, following the keys file as it changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path else None
        self._by_digest: dict[str, Caller] = {}
        self._seen: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        if self.path is not None:
            self._by_digest = _read(self.path)  # a broken file at start-up stops the service
            self._seen = _signature(self.path)

    def __len__(self) -> int:
        return len(self._by_digest)

    def authenticate(self, headers: Mapping[str, str]) -> Caller:
        """The caller of the request's key; Unauthorized (401) when there is none or it is unknown."""
        key = presented_key(headers)
        if not key:
            raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'",
                               headers={"WWW-Authenticate": "Bearer"})
        self._follow_file()
        caller = self._by_digest.get(hash_key(key))
        if caller is None:
            raise Unauthorized("unknown API key", headers={"WWW-Authenticate": "Bearer"})
        return caller

    def _follow_file(self) -> None:
        """Read the file again if it changed (checked at most once a second: one stat)."""
        now = time.monotonic()
        if self.path is None or now - self._checked < _RELOAD_CHECK_S or not self._lock.acquire(blocking=False):
            return
        try:
            self._checked = now
            signature = _signature(self.path)
            if signature == self._seen:
                return
            self._seen = signature
            if signature is None:
                log.error("API keys file %s is gone: every key is refused until it is back", self.path.name)
                self._by_digest = {}
                return
            try:
                self._by_digest = _read(self.path)
                log.info("API keys file changed: %d keys", len(self._by_digest))
            except (OSError, ValueError) as exc:  # half-written or malformed: keep the last good keys
                log.error("API keys file changed but cannot be read (%s); keeping the previous keys", exc)
        finally:
            self._lock.release()


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file does (a Secret volume swaps a symlink: follow it)."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


class KeyEntry(BaseModel):
    """One key of the keys file; a malformed entry refuses the whole file when it is read (ValueError)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    tenant: str | None = Field(default=None, pattern=NAME_PATTERN)
    admin: bool = False
    dsls: list[str] | None = Field(default=None, max_length=1000)

    @model_validator(mode="after")
    def _someone(self) -> KeyEntry:
        if not (self.tenant or self.admin):
            raise ValueError("a key needs a tenant or admin: true")
        return self


class _KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry] = Field(default_factory=list, max_length=100_000)


def _read(path: Path) -> dict[str, Caller]:
    try:
        raw = safe_yaml.load(path.read_bytes(), max_bytes=32 * 2**20, max_nodes=1_000_000) or {}
        entries = _KeysFile.model_validate(raw).keys
    except safe_yaml.YAMLRefused as exc:
        raise ValueError(f"{path.name}: {exc}") from None
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part + 1) if isinstance(part, int) else str(part) for part in first["loc"])
        raise ValueError(f"{path.name}: {where}: {first['msg']} (each key needs a 64-hex sha256 and a tenant or "
                         "admin: true)") from None
    return {
        entry.sha256.lower(): Caller(key_id=entry.sha256.lower()[:8], tenant=entry.tenant, admin=entry.admin,
                                     dsls=frozenset(entry.dsls) if entry.dsls is not None else None)
        for entry in entries
    }


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key a request presents: ``Authorization: Bearer <key>`` (any case) or ``X-API-Key``; both, when
    they disagree, are a 401 (one used to win silently, so a proxy's key and a client's were confused)."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    bearer = value.strip() if scheme.lower() == "bearer" else ""
    header = headers.get("x-api-key") or ""
    if bearer and header and bearer != header:
        raise Unauthorized("two different API keys: send one, as 'Authorization: Bearer <key>' or 'X-API-Key'",
                           headers={"WWW-Authenticate": "Bearer"})
    return bearer or header or None
