"""Adapters published at run time (``POST /adapters``): checked, versioned in the store, served by every replica.

The body is the PEFT folder as a ``.tar.gz`` (``tar czf contoso.tar.gz -C adapters/contoso .``): its
``manifest.yaml`` (name, dsl, tenants...), ``adapter_config.json`` and ``adapter_model.safetensors``. It is
unpacked with tar's ``data`` filter (no links, devices or paths out of the folder), bounded in size and files,
and read like a shipped adapter: made for the served base model, within ``max_lora_rank``, weights whole.
A tenant's adapter serves that tenant only (its manifest's ``tenants`` is set so) and lives in the tenant's
own namespace; an admin's is shared. Each replica unpacks a version into its cache and hands it to the engine
(``add_lora``) before a request needs it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import re
import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path

import yaml

from service.adapters import Adapter, AdapterRegistry, read_adapter
from service.config import Settings
from service.engine import EngineSlot
from service.errors import BadRequest, Forbidden, RateLimited, UnknownAdapter
from service.store import Version, Versions, owner_key, tenant_of

__all__ = ["NAME_PATTERN", "AdapterPublisher", "pack_adapter"]

log = logging.getLogger("nl2dsl.adapters")

_KIND = "adapters"
#: What a published adapter may be called (so its name is also a safe key in the store).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
_MAX_FILES = 16


class AdapterPublisher:
    """Publish, roll back and delete an owner's adapters; install versions on this replica."""

    kind = _KIND

    def __init__(self, registry: AdapterRegistry, versions: Versions, settings: Settings, engine: EngineSlot):
        self.registry = registry
        self.versions = versions
        self.settings = settings
        self.engine = engine
        self.cache = Path(settings.cache_dir) / "published-adapters"
        #: The version of each (owner, name) this replica serves (a deletion included), for service.sync.
        self.installed: dict[tuple[str, str], int] = {}

    async def publish(self, *, owner: str | None, archive: bytes, name: str | None = None) -> Adapter:
        """Check ``archive`` and publish it as the next version of the adapter it holds (or ``name``)."""
        with tempfile.TemporaryDirectory(prefix="nl2dsl-adapter-") as folder:
            manifest = await asyncio.to_thread(self._unpack, archive, Path(folder))
            name = name or str(manifest.get("name") or "")
            if not _NAME.match(name):
                raise BadRequest(f"adapter name {name!r}: letters, digits, _ . - (at most 64)",
                                 detail={"name": name})
            if owner is None and name in self.registry.shipped_names():
                raise Forbidden(f"{name!r} is a shipped adapter; choose another name", detail={"name": name})
            mine = [a for a in self.registry.all() if a.owner == owner and a.version is not None]
            limit = self.settings.max_adapters_per_tenant
            if name not in {a.name for a in mine} and len(mine) >= limit:
                raise RateLimited(f"at most {limit} published adapters per tenant; delete one first",
                                  detail={"limit": "adapters", "max": limit})
            manifest.update(name=name, tenants=[owner] if owner is not None else manifest.get("tenants") or ["*"])
            (Path(folder) / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
            checked = await asyncio.to_thread(self._read, Path(folder), owner, None)
            if checked.error:
                raise BadRequest(f"adapter {name!r} cannot be served: {checked.error}",
                                 detail={"adapter": name, "reason": checked.error})
            data = await asyncio.to_thread(pack_adapter, Path(folder))
        version = await asyncio.to_thread(self.versions.publish_within, _KIND, owner_key(owner), name, data,
                                          suffix="tar.gz", max_owner_bytes=self.settings.max_store_bytes_per_tenant)
        return await self._install(version, data)

    async def history(self, *, owner: str | None, name: str) -> list[Version]:
        history = await asyncio.to_thread(self.versions.history, _KIND, owner_key(owner), name)
        if not history:
            raise UnknownAdapter(f"no published adapter {name!r} of yours", detail={"adapter": name})
        return history

    async def rollback(self, *, owner: str | None, name: str, version: int) -> Adapter:
        published = await asyncio.to_thread(self.versions.republish, _KIND, owner_key(owner), name, version)
        if published is None:
            raise UnknownAdapter(f"adapter {name!r} of yours has no version {version}",
                                 detail={"adapter": name, "version": version})
        return await self._install(published, None)

    async def delete(self, *, owner: str | None, name: str) -> None:
        if not any(a.owner == owner and a.name == name and a.version is not None for a in self.registry.all()):
            raise UnknownAdapter(f"no published adapter {name!r} of yours", detail={"adapter": name})
        await self.install(await asyncio.to_thread(self.versions.publish, _KIND, owner_key(owner), name, None,
                                                   suffix="tar.gz"))

    async def install(self, version: Version) -> None:
        """Serve ``version`` on this replica (a deletion: stop serving the adapter)."""
        await self._install(version, None)

    async def _install(self, version: Version, data: bytes | None) -> Adapter | None:
        owner = tenant_of(version.owner)
        self.installed[(version.owner, version.name)] = version.number
        if version.deleted:
            self.registry.withdraw(owner, version.name)
            return None
        data = data if data is not None else await asyncio.to_thread(self.versions.read, version)
        folder = self.cache / hashlib.sha256(data).hexdigest()[:32]  # by content: the same archive, one folder
        if not (folder / "manifest.yaml").exists():
            await asyncio.to_thread(self._unpack_into, data, folder)
        adapter = await asyncio.to_thread(self._read, folder, owner, version.number)
        self.registry.publish(adapter)
        engine = self.engine.engine
        if adapter.error is None and engine is not None and engine.ready:
            try:  # loaded now, on every replica, rather than by the first request that needs it
                await engine.load(adapter.ref)
            except Exception as exc:  # the adapter's own requests will say so (409)
                log.warning("published adapter %s could not be loaded: %s", adapter.name, exc)
        return adapter

    def _read(self, folder: Path, owner: str | None, version: int | None) -> Adapter:
        return read_adapter(folder, base_fingerprint=self.registry.base_fingerprint, max_rank=self.registry.max_rank,
                            owner=owner, version=version)

    def _unpack_into(self, data: bytes, folder: Path) -> None:
        """Unpack beside ``folder``, then move it in place. A folder left incomplete by an earlier try (no
        manifest) is replaced; one installed meanwhile by another publish of the same archive is kept."""
        partial = folder.with_name(f"{folder.name}.partial-{uuid.uuid4().hex[:8]}")
        partial.mkdir(parents=True)
        try:
            self._unpack(data, partial)
            if (folder / "manifest.yaml").exists():
                return
            shutil.rmtree(folder, ignore_errors=True)
            partial.replace(folder)
        finally:
            shutil.rmtree(partial, ignore_errors=True)

    def _unpack(self, data: bytes, folder: Path) -> dict:
        """Unpack a .tar.gz of an adapter folder into ``folder``; its manifest (BadRequest when it is not one)."""
        limit = self.settings.max_adapter_bytes
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
                members = [m for m in archive.getmembers() if m.isfile()]
                if len(members) > _MAX_FILES or sum(m.size for m in members) > limit:
                    raise BadRequest(f"an adapter archive holds at most {_MAX_FILES} files and {limit} bytes")
                for member in members:  # the folder's files, at its top or under one folder
                    member.name = Path(member.name).name
                    archive.extract(member, folder, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BadRequest("the body is not a .tar.gz of an adapter folder", detail={"reason": str(exc)}) from exc
        try:
            return yaml.safe_load((folder / "manifest.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise BadRequest("the archive has no readable manifest.yaml") from exc


def pack_adapter(folder: Path) -> bytes:
    """An adapter folder as the .tar.gz `POST /adapters` takes (its files at the top)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(folder.iterdir()):
            archive.add(path, arcname=path.name)
    return buffer.getvalue()
