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
requests for it get a clear 409 and the service stays up. Integer ids for vLLM are derived from the name and
the weights' hash: stable across restarts, and new when the weights change (vLLM caches adapters by id).

One rule says who may use an adapter (:meth:`Adapter.usable_by`): its own tenants, everyone for a shared one,
admins always. Resolution, listing and warm-up all ask it, before anything else about the adapter is looked
at: to a tenant, another tenant's adapter is exactly as unknown as one that does not exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from service.engine import AdapterRef
from service.errors import AdapterUnavailable, BadRequest, UnknownAdapter
from service.security import Caller

__all__ = ["BASE", "Adapter", "AdapterRegistry", "read_adapter"]

#: The adapter name that asks for the base model with no adapter.
BASE = "base"
_SHARED = "*"


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    lora_id: int
    dsl: str | None = None
    tenants: tuple[str, ...] = (_SHARED,)
    rank: int | None = None
    base_model: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    #: Why this adapter cannot be served; None when it can.
    error: str | None = None
    #: Published at run time by this tenant (its own namespace: another tenant's adapter of the same name is
    #: another adapter); None: shipped in the adapters folder, or published by an admin.
    owner: str | None = None
    version: int | None = None

    @property
    def key(self) -> tuple[str | None, str]:
        return self.owner, self.name

    @property
    def shared(self) -> bool:
        return _SHARED in self.tenants

    @property
    def prompt_examples(self) -> int | None:
        """Few-shot examples the adapter was trained with (``prompt.examples`` in its manifest)."""
        value = (self.manifest.get("prompt") or {}).get("examples")
        return int(value) if value is not None else None

    @property
    def prompt_catalog_hints(self) -> bool:
        """Whether the adapter was trained with catalog hints in its system prompt (default: no)."""
        return bool((self.manifest.get("prompt") or {}).get("catalog_hints", False))

    @property
    def ref(self) -> AdapterRef:
        label = self.name if self.owner is None else f"{self.owner}/{self.name}"
        return AdapterRef(name=label, lora_id=self.lora_id, path=str(self.path))

    def usable_by(self, caller: Caller, *, tenant: str | None = None) -> bool:
        """The one access rule: shared adapters serve everyone, a tenant's its own tenants, admins everything.

        ``tenant``: the tenant the caller acts as (an admin naming one), else the caller's own.
        """
        acting = tenant if tenant is not None else caller.tenant
        return caller.admin or self.shared or (acting is not None and acting in self.tenants)


class AdapterRegistry:
    """The shipped adapters (a folder) and those published at run time; ``resolve`` picks the one a request
    gets, ``usable`` lists a caller's."""

    def __init__(self, directory: Path | None, *, base_fingerprint: str, max_rank: int) -> None:
        self.directory = Path(directory) if directory else None
        self.base_fingerprint = base_fingerprint
        self.max_rank = max_rank
        self._shipped: dict[tuple[str | None, str], Adapter] = {}
        self._published: dict[tuple[str | None, str], Adapter] = {}

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
                adapter = read_adapter(folder, base_fingerprint=self.base_fingerprint, max_rank=self.max_rank)
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
        acting = Caller(caller.key_id, tenant=tenant if tenant is not None else caller.tenant)
        candidates = [a for a in self.all() if a.dsl in (None, dsl) and a.usable_by(acting)]
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


def read_adapter(folder: Path, *, base_fingerprint: str, max_rank: int, owner: str | None = None,
                 version: int | None = None) -> Adapter:
    """Read one adapter folder; problems become ``Adapter.error`` rather than exceptions."""
    manifest: dict[str, Any] = {}
    errors: list[str] = []
    manifest_path = folder / "manifest.yaml"
    try:
        manifest = yaml.safe_load(manifest_path.read_text()) or {}
    except FileNotFoundError:
        errors.append("no manifest.yaml")
    except yaml.YAMLError as exc:
        errors.append(f"manifest.yaml is not valid YAML (line {_yaml_line(exc)})")
    name = str(manifest.get("name") or folder.name)
    config: dict[str, Any] = {}
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except FileNotFoundError:
        errors.append("no adapter_config.json")
    except json.JSONDecodeError as exc:
        errors.append(f"adapter_config.json is not valid JSON (line {exc.lineno})")
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        errors.append("no adapter_model.safetensors")
    elif problem := _safetensors_problem(weights):
        errors.append(f"adapter_model.safetensors is corrupt: {problem}")
    rank = manifest.get("rank") or config.get("r")
    if rank is not None and int(rank) > max_rank:
        errors.append(f"rank {rank} is above the served max_lora_rank {max_rank}")
    base = manifest.get("base_model") or {}
    if manifest and base.get("fingerprint") != base_fingerprint:
        errors.append(
            f"made for base model {base.get('id', '?')} (fingerprint {base.get('fingerprint')}), "
            f"but the service runs fingerprint {base_fingerprint}"
        )
    tenants = manifest.get("tenants") or [_SHARED]
    return Adapter(
        name=name,
        path=folder.resolve(),
        lora_id=_lora_id(f"{owner}/{name}" if owner is not None else name, weights),
        dsl=manifest.get("dsl"),
        tenants=tuple(str(t) for t in tenants),
        rank=int(rank) if rank is not None else None,
        base_model=dict(base),
        manifest=manifest,
        error="; ".join(errors) or None,
        owner=owner,
        version=version,
    )


def _yaml_line(exc: yaml.YAMLError) -> int | str:
    mark = getattr(exc, "problem_mark", None)
    return mark.line + 1 if mark is not None else "?"


def _lora_id(name: str, weights: Path) -> int:
    digest = hashlib.sha256(name.encode())
    if weights.is_file():
        digest.update(hashlib.sha256(weights.read_bytes()).digest())
    # vLLM needs a positive int32-sized id.
    return zlib.crc32(digest.digest()) % 2_000_000_000 + 1


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be read (bad header, truncated data), without loading the tensors."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if header_len <= 0 or 8 + header_len > size:
                return "the header is cut short"
            header = json.loads(f.read(header_len))
    except (OSError, ValueError):
        return "the header is unreadable"
    ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
    if not ends:
        return "it holds no tensors"
    if 8 + header_len + max(ends) > size:
        return f"the data is cut short ({size} bytes, {8 + header_len + max(ends)} expected)"
    return None
