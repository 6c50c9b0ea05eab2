"""Adapter registry: the LoRA adapters in ``adapters/``, which tenant gets which, and whether each may be served.

An adapter is a PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``) with a
``manifest.yaml``::

    name: contoso
    dsl: flow
    tenants: [contoso]          # "*" = every tenant (a general adapter)
    base_model: {id: SmolLM2-135M-Instruct, fingerprint: d7e5b537dd607d63}
    rank: 16

An adapter made for another base model, or with a rank above ``max_lora_rank``, or with missing files, is
kept in the registry with the reason it cannot be served (listed by ``GET /adapters`` to those who may use it);
requests for it get a clear 409 and the service stays up. Every file is checked against the served base model
(:mod:`service.adapters.validation`) before the adapter is registered as servable. The registry makes the
integer ids vLLM caches adapters by: one per (owner, name, weights digest), from a counter, so two adapters
never share one (a hash of name and weights, cut to 31 bits, could collide by construction), and new weights
get a new id. An adapter the engine could not load on this replica is quarantined here: kept with the reason,
listed to its owner, never handed to the engine again.

The service's one access rule (:mod:`service.security`) says who may use an adapter
(:meth:`Adapter.usable_by`): its own tenants, everyone for a shared one, admins always. Resolution, listing
and warm-up all ask it, before anything else about the adapter is looked at: to a tenant, another tenant's
adapter is exactly as unknown as one that does not exist.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.adapters.validation import AdapterInvalid, BaseShapes, Manifest, check_folder, model_of, read_manifest
from service.engine import AdapterRef
from service.errors import AdapterUnavailable, BadRequest, UnknownAdapter
from service.names import EVERY_TENANT, client_name
from service.security import Caller, serves

__all__ = ["BASE", "Adapter", "AdapterRegistry", "read_adapter"]

#: The adapter name that asks for the base model with no adapter.
BASE = "base"
#: More than a manifest may hold: read_manifest refuses it with the reason.
_MANIFEST_READ = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    lora_id: int
    dsl: str | None = None
    tenants: tuple[str, ...] = (EVERY_TENANT,)
    rank: int | None = None
    base_model: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    #: Why this adapter cannot be served; None when it can.
    error: str | None = None
    #: Published at run time by this tenant (its own namespace: another tenant's adapter of the same name is
    #: another adapter); None: shipped in the adapters folder, or published by an admin.
    owner: str | None = None
    version: int | None = None
    #: SHA-256 of the weights file: with owner and name, what the registry's engine id stands for.
    digest: str = ""

    @property
    def key(self) -> tuple[str | None, str]:
        return self.owner, self.name

    @property
    def metric_label(self) -> str:
        """The ``adapter`` label in metrics: a shipped adapter's name; "custom" for every published one, whose
        names their owners choose (a tenant's "flow-general" must not land in the shipped one's series, and
        publishing must not add series without bound)."""
        return "custom" if self.version is not None else self.name

    @property
    def meta(self) -> dict[str, Any]:
        """What the store's journal records of a published version, for other replicas' :meth:`from_meta`."""
        return {"manifest": self.manifest, "digest": self.digest, "rank": self.rank}

    @property
    def shared(self) -> bool:
        return EVERY_TENANT in self.tenants

    @property
    def prompt_examples(self) -> int | None:
        """Few-shot examples the adapter was trained with (``prompt.examples`` in its manifest)."""
        value = (self.manifest.get("prompt") or {}).get("examples")
        return int(value) if value is not None else None

    @property
    def candidates(self) -> int:
        """Candidates a request gets by default (``prompt.candidates``, chosen by onboarding; default 1)."""
        value = (self.manifest.get("prompt") or {}).get("candidates")
        return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 8 else 1

    @property
    def prompt_catalog_hints(self) -> bool:
        """Whether the adapter was trained with catalog hints in its system prompt (default: no)."""
        return bool((self.manifest.get("prompt") or {}).get("catalog_hints", False))

    def ref(self, dsl: str | None = None) -> AdapterRef:
        """What the engine gets, named as clients name it in ``model``: ``<dsl>:<adapter>`` (``dsl``: the
        request's DSL, for an adapter made for any), which the gateway's LoRA affinity matches on."""
        dsl = self.dsl or dsl
        return AdapterRef(name=client_name(dsl, self.name), lora_id=self.lora_id, path=str(self.path))

    @property
    def owners(self) -> tuple[str | None, ...]:
        """Whom the adapter is for, as the access rule reads it (:mod:`service.security`): None for every tenant."""
        return tuple(None if t == EVERY_TENANT else t for t in self.tenants)

    def usable_by(self, caller: Caller, *, tenant: str | None = None) -> bool:
        """The access rule (:meth:`Caller.may_use`): ``tenant`` is the tenant the caller acts as (an admin
        naming one), else the caller's own."""
        return caller.may_use(self.owners, tenant=tenant)

    def serves(self, tenant: str | None) -> bool:
        """Whether this adapter is for ``tenant``'s requests (:func:`service.security.serves`): the rule without
        an admin's rights, by which a request that names no adapter is given one."""
        return serves(self.owners, tenant)


class AdapterRegistry:
    """The shipped adapters (a folder) and those published at run time; ``resolve`` picks the one a request
    gets, ``usable`` lists a caller's."""

    def __init__(self, directory: Path | None, *, base_fingerprint: str, base: BaseShapes, max_rank: int) -> None:
        self.directory = Path(directory) if directory else None
        self.base_fingerprint = base_fingerprint
        self.base = base
        self.max_rank = max_rank
        self._shipped: dict[tuple[str | None, str], Adapter] = {}
        self._published: dict[tuple[str | None, str], Adapter] = {}
        self._ids: dict[tuple[str | None, str, str], int] = {}
        self._next_id = itertools.count(1)
        self._ids_lock = threading.Lock()  # scans run in threads
        #: Why the engine refused an adapter version on this replica, by engine id.
        self._quarantined: dict[int, str] = {}

    def read(self, folder: Path, *, owner: str | None = None, version: int | None = None) -> Adapter:
        """Read and check one adapter folder against the base (blocking: run it in a thread); with its id."""
        adapter = read_adapter(folder, base_fingerprint=self.base_fingerprint, base=self.base,
                               max_rank=self.max_rank, owner=owner, version=version)
        with self._ids_lock:
            lora_id = self._ids.setdefault((owner, adapter.name, adapter.digest), next(self._next_id))
        return dataclasses.replace(adapter, lora_id=lora_id, error=adapter.error or self._quarantined.get(lora_id))

    def from_meta(self, meta: dict[str, Any], *, owner: str | None, name: str, version: int,
                  folder: Path) -> Adapter:
        """A published version as its journal line describes it (:meth:`meta`), before its files are here.

        The line is checked as a manifest would be, and a tenant's adapter serves that tenant only, whatever
        the line says; the files are checked in full when they are fetched (service.adapters.residency)."""
        adapter = Adapter(name=name, path=folder, lora_id=0, owner=owner, version=version,
                          tenants=(owner,) if owner is not None else (EVERY_TENANT,))
        try:
            manifest = model_of(Manifest, meta.get("manifest"), "the journal's manifest")
            digest, rank = meta.get("digest"), meta.get("rank")
            if not (isinstance(digest, str) and _HEX64.match(digest)) or not isinstance(rank, int):
                raise AdapterInvalid("the journal's line has no weights digest or rank")
        except AdapterInvalid as exc:
            return dataclasses.replace(adapter, error=str(exc))
        error = None
        if manifest.base_model.fingerprint != self.base_fingerprint:
            error = (f"made for base model {manifest.base_model.id} (fingerprint {manifest.base_model.fingerprint}), "
                     f"but the service runs fingerprint {self.base_fingerprint}")
        elif not 1 <= rank <= self.max_rank:
            error = f"rank {rank} is not within 1 and the served max_lora_rank {self.max_rank}"
        with self._ids_lock:
            lora_id = self._ids.setdefault((owner, name, digest), next(self._next_id))
        return dataclasses.replace(
            adapter, lora_id=lora_id, dsl=manifest.dsl, rank=rank, base_model=manifest.base_model.model_dump(),
            manifest=manifest.model_dump(), digest=digest,
            tenants=adapter.tenants if owner is not None else tuple(manifest.tenants),
            error=error or self._quarantined.get(lora_id))

    def quarantine(self, adapter: Adapter, reason: str) -> Adapter:
        """Never hand ``adapter`` (this version) to the engine again on this replica; its owner sees ``reason``."""
        self._quarantined[adapter.lora_id] = reason
        quarantined = dataclasses.replace(adapter, error=reason)
        table = self._published if adapter.version is not None else self._shipped
        if (current := table.get(adapter.key)) is not None and current.lora_id == adapter.lora_id:
            table[adapter.key] = quarantined
        return quarantined

    def load(self) -> AdapterRegistry:
        """Register every adapter folder under the directory (a bad one is kept with its error)."""
        self._shipped = self._scan()
        return self

    async def reload(self) -> None:
        """Rescan the folder (hashing the weights beside the event loop); published adapters stay."""
        self._shipped = await asyncio.to_thread(self._scan)

    def _scan(self) -> dict[tuple[str | None, str], Adapter]:
        found: dict[tuple[str | None, str], Adapter] = {}
        if self.directory and self.directory.is_dir():
            for folder in sorted(p for p in self.directory.iterdir() if p.is_dir()):
                adapter = self.read(folder)
                found[adapter.key] = adapter
        return found

    def publish(self, adapter: Adapter) -> None:
        """Serve a published adapter (a later version replaces the earlier)."""
        self._published[adapter.key] = adapter

    def withdraw(self, owner: str | None, name: str) -> None:
        self._published.pop((owner, name), None)

    def shipped_names(self) -> set[str]:
        return {name for _, name in self._shipped}

    def all(self) -> list[Adapter]:
        adapters = {**self._shipped, **self._published}
        return [adapters[key] for key in sorted(adapters, key=lambda k: (k[1], k[0] or ""))]

    def usable(self, caller: Caller) -> list[Adapter]:
        """The adapters ``caller`` may use (also those that cannot be served, with the reason)."""
        return [a for a in self.all() if a.usable_by(caller)]

    def resolve(self, caller: Caller, *, dsl: str, tenant: str | None = None,
                name: str | None = None) -> Adapter | None:
        """The adapter for a request: the one named, else the tenant's own for this DSL, else a shared one.

        ``name="base"`` asks for the base model; None is returned when nothing fits (base model). The access
        rule comes first: an adapter the caller may not use is UnknownAdapter (404), like a missing one.
        A named or tenant-owned adapter that cannot be served raises (409); a broken shared one is skipped.
        """
        if name == BASE:
            return None
        if name is not None:
            acting = tenant if tenant is not None else caller.tenant
            found = next((a for key in ((acting, name), (None, name)) if (a := self._get(key)) is not None
                          and a.usable_by(caller, tenant=tenant)), None)
            if found is None:
                raise UnknownAdapter(f"unknown adapter {name!r}; GET /adapters lists yours", detail={"adapter": name})
            if found.dsl and found.dsl != dsl:
                raise BadRequest(
                    f"adapter {name!r} generates {found.dsl!r}, not {dsl!r}",
                    detail={"adapter": name, "adapter_dsl": found.dsl, "dsl": dsl},
                )
            return _servable(found)
        acting = tenant if tenant is not None else caller.tenant
        candidates = [a for a in self.all() if a.dsl in (None, dsl) and a.serves(acting)]
        # A tenant's own adapter beats a shared one; an adapter for this DSL beats a DSL-agnostic one.
        candidates.sort(key=lambda a: (a.shared, a.dsl is None, a.name))
        for candidate in candidates:
            if not candidate.shared:
                # The tenant's own adapter: if it is broken, say so rather than silently serve another one.
                return _servable(candidate)
            if candidate.error is None:
                return candidate
            # A broken shared adapter must not take every tenant down: the next candidate serves.
        return None

    def _get(self, key: tuple[str | None, str]) -> Adapter | None:
        return self._published.get(key) or self._shipped.get(key)


def _servable(adapter: Adapter) -> Adapter:
    if adapter.error:
        raise AdapterUnavailable(f"adapter {adapter.name!r} cannot be served: {adapter.error}",
                                 detail={"adapter": adapter.name})
    return adapter


def read_adapter(folder: Path, *, base_fingerprint: str, base: BaseShapes, max_rank: int, owner: str | None = None,
                 version: int | None = None) -> Adapter:
    """Read one adapter folder; problems become ``Adapter.error`` rather than exceptions. Its ``lora_id`` is
    0 until a registry gives it one (:meth:`AdapterRegistry.read`)."""
    weights = folder / "adapter_model.safetensors"
    fallback = Adapter(name=folder.name, path=folder.resolve(), lora_id=0, owner=owner, version=version,
                       tenants=(owner,) if owner is not None else (EVERY_TENANT,), digest=_digest(weights))
    try:
        manifest = read_manifest(folder.joinpath("manifest.yaml").read_bytes()[:_MANIFEST_READ])
    except FileNotFoundError:
        manifest = None
    except AdapterInvalid as exc:
        return dataclasses.replace(fallback, error=str(exc))
    if manifest is not None:
        fallback = dataclasses.replace(fallback, name=manifest.name or folder.name, dsl=manifest.dsl,
                                       tenants=tuple(manifest.tenants), rank=manifest.rank,
                                       base_model=manifest.base_model.model_dump(), manifest=manifest.model_dump())
    try:
        _, config = check_folder(folder, base=base, max_rank=max_rank)
    except AdapterInvalid as exc:
        return dataclasses.replace(fallback, error=str(exc))
    assert manifest is not None  # check_folder read it
    error = None
    if manifest.base_model.fingerprint != base_fingerprint:
        error = (f"made for base model {manifest.base_model.id} (fingerprint {manifest.base_model.fingerprint}), "
                 f"but the service runs fingerprint {base_fingerprint}")
    return dataclasses.replace(fallback, rank=config.r, error=error)


def _digest(weights: Path) -> str:
    if not weights.is_file():
        return ""
    digest = hashlib.sha256()
    with weights.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
