"""Adapters published at run time (``POST /adapters``): checked, versioned in the store, served by every replica.

The body is the PEFT folder as a ``.tar.gz`` (``tar czf contoso.tar.gz -C adapters/contoso .``): its
``manifest.yaml`` (name, dsl, tenants...), ``adapter_config.json`` and ``adapter_model.safetensors``. On the
upload pool (:mod:`service.upload_pool`, never the request path's threads) it is unpacked as a metered stream
(:mod:`service.adapters.archive`) and every file is checked against the served base model
(:mod:`service.adapters.validation`). Then, on a replica whose engine runs, the engine loads it once as a
trial: an adapter the engine refuses is a 400 and nothing is stored. Only then is it written to the store,
through the owner's quotas (:mod:`service.publishing`), and the folder unpacked and checked becomes the
version's files on this replica (one pass: neither unpacked nor checked again). A tenant's adapter serves that
tenant only (its manifest's ``tenants`` is set so) and lives in the tenant's own namespace; an admin's is shared.

Every other replica learns of the version from the store's journal, with the manifest and weights digest
recorded there, and fetches its files only when a request first needs them (:mod:`service.adapters.residency`:
checked again, the store is not trusted more than a tenant); a version the engine refuses there is quarantined
(:meth:`AdapterRegistry.quarantine`): listed with the reason to its owner, never loaded again, so it cannot
fail the engine in a loop.
"""

from __future__ import annotations

import asyncio
import io
import logging
import tarfile
from pathlib import Path

import yaml

from service.adapters.archive import ArchiveRefused, unpack_confined
from service.adapters.registry import BASE, Adapter, AdapterRegistry
from service.adapters.residency import AdapterResidency
from service.adapters.validation import AdapterInvalid, read_manifest
from service.config import Settings
from service.engine import EngineSlot
from service.errors import AdapterUnavailable, BadRequest, Forbidden, UnknownAdapter
from service.names import is_name
from service.publishing import OwnerGate
from service.store import Kind, Version, Versions, owner_key, tenant_of
from service.upload_pool import UploadPool

__all__ = ["AdapterPublisher", "pack_adapter"]

log = logging.getLogger("nl2dsl.adapters")

_KIND = Kind.ADAPTERS


class AdapterPublisher:
    """Publish, roll back and delete an owner's adapters; install versions on this replica."""

    kind = _KIND

    def __init__(self, registry: AdapterRegistry, versions: Versions, settings: Settings, engine: EngineSlot, *,
                 gate: OwnerGate, pool: UploadPool, residency: AdapterResidency) -> None:
        self.registry = registry
        self.versions = versions
        self.settings = settings
        self.engine = engine
        self.gate = gate
        self.pool = pool
        self.residency = residency
        #: The version of each (owner, name) this replica serves (a deletion included), for service.sync.
        self.installed: dict[tuple[str, str], int] = {}

    async def publish(self, *, owner: str | None, archive: bytes, name: str | None = None) -> Adapter:
        """Check ``archive`` and publish it as the next version of the adapter it holds (or ``name``).

        One pass: the folder unpacked and checked here becomes the version's files on this replica."""
        with self.residency.staging() as staging:
            folder = Path(staging) / "adapter"
            adapter, data = await self.pool.run(owner, self._prepare, archive, folder, owner, name)
            version = await self.gate.publish(_KIND, owner_key(owner), adapter.name, data, suffix="tar.gz",
                                              max_items=self.settings.max_adapters_per_tenant, meta=adapter.meta,
                                              before_write=lambda: self._trial_load(adapter))
            return await self._install(version, checked=(folder, adapter))

    def _prepare(self, archive: bytes, folder: Path, owner: str | None, name: str | None) -> tuple[Adapter, bytes]:
        """On an upload thread: unpack, name, check against the base, and pack what will be stored."""
        folder.mkdir(exist_ok=True)
        try:
            unpack_confined(archive, folder, max_bytes=self.settings.max_adapter_bytes,
                            timeout_s=self.settings.upload_unpack_timeout_s)
            manifest = read_manifest((folder / "manifest.yaml").read_bytes())
        except FileNotFoundError:
            raise BadRequest("the archive has no manifest.yaml") from None
        except (ArchiveRefused, AdapterInvalid) as exc:
            raise BadRequest(f"the body is not an adapter this service takes: {exc}",
                             detail={"reason": str(exc)}) from None
        name = name or manifest.name or ""
        if not is_name(name):
            raise BadRequest("an adapter's name: letters, digits, _ . - (at most 64), starting with a letter or digit",
                             detail={"field": "name"})
        if name.lower() == BASE:  # "base" selects no adapter: one named so could never be reached
            raise BadRequest(f"{name!r} is reserved (it selects the base model, no adapter); choose another name",
                             detail={"field": "name", "name": name})
        if owner is None and name in self.registry.shipped_names():
            raise Forbidden(f"{name!r} is a shipped adapter; choose another name", detail={"name": name})
        fields = manifest.model_dump(exclude_none=True)
        fields.update(name=name, tenants=[owner] if owner is not None else manifest.tenants)
        (folder / "manifest.yaml").write_text(yaml.safe_dump(fields, sort_keys=False))
        checked = self.registry.read(folder, owner=owner)
        if checked.error:
            raise BadRequest(f"adapter {name!r} cannot be served: {checked.error}",
                             detail={"adapter": name, "reason": checked.error})
        return checked, pack_adapter(folder)

    async def _trial_load(self, adapter: Adapter) -> None:
        """Have this replica's engine load the adapter before anything is stored (400 if it cannot)."""
        engine = self.engine.engine
        if engine is None or not engine.ready:
            return  # still starting: the checks above are what every replica's install repeats
        try:
            await engine.load(adapter.ref())
        except AdapterUnavailable as exc:
            self.registry.quarantine(adapter, "the engine could not load it")
            raise BadRequest(f"adapter {adapter.name!r} cannot be served: the engine could not load it",
                             detail={"adapter": adapter.name}) from exc

    async def history(self, *, owner: str | None, name: str) -> list[Version]:
        return await self.gate.history(_KIND, owner_key(owner), name, unknown=UnknownAdapter)

    async def rollback(self, *, owner: str | None, name: str, version: int) -> Adapter:
        """Publish version ``version``'s content again as the newest, within the owner's quotas."""
        data = await self.gate.content(_KIND, owner_key(owner), name, version, unknown=UnknownAdapter)
        with self.residency.staging() as staging:  # checked as an upload is: the store is trusted no more
            folder = Path(staging) / "adapter"
            earlier, _ = await self.pool.run(owner, self._prepare, data, folder, owner, name)
            published = await self.gate.publish(_KIND, owner_key(owner), name, data, suffix="tar.gz",
                                                max_items=self.settings.max_adapters_per_tenant, meta=earlier.meta)
            adapter = await self._install(published, checked=(folder, earlier))
        assert adapter is not None
        return adapter

    async def delete(self, *, owner: str | None, name: str) -> None:
        if not any(a.owner == owner and a.name == name and a.version is not None for a in self.registry.all()):
            raise UnknownAdapter(f"no published adapter {name!r} of yours", detail={"adapter": name})
        await self.install(await self.gate.withdraw(_KIND, owner_key(owner), name, suffix="tar.gz"))

    async def install(self, version: Version) -> None:
        """Serve ``version`` on this replica (a deletion: stop serving the adapter). A version whose journal line
        describes it is registered without its files, which the first request that needs it fetches."""
        if version.deleted or not version.meta:
            await self._install(version)
            return
        self.installed[(version.owner, version.name)] = version.number
        await self._serve(tenant_of(version.owner), version.name, self.residency.expect(version))

    async def _serve(self, owner: str | None, name: str, adapter: Adapter | None) -> None:
        """Serve ``adapter`` (None: nothing) as ``owner``'s ``name``, then drop the files of the version it
        replaces (requests resolve the new one from then on; one still holding the old keeps its files)."""
        replaced = next((a for a in self.registry.all() if a.owner == owner and a.name == name
                         and a.version is not None), None)
        if adapter is None:
            self.registry.withdraw(owner, name)
        else:
            self.registry.publish(adapter)
        if replaced is not None and replaced.path != getattr(adapter, "path", None):
            await self.residency.forget(replaced)

    async def _install(self, version: Version, *, checked: tuple[Path, Adapter] | None = None) -> Adapter | None:
        """Serve ``version`` on this replica with its files here: ``checked`` (a folder this replica has just
        unpacked and checked, and what the check found), else read from the store and checked."""
        owner = tenant_of(version.owner)
        self.installed[(version.owner, version.name)] = version.number
        if version.deleted:
            await self._serve(owner, version.name, None)
            return None
        if checked is not None:
            adapter = await self.residency.adopt(version, *checked)
        else:
            adapter = await self.residency.place(version, await asyncio.to_thread(self.versions.read, version))
        await self._serve(owner, version.name, adapter)
        engine = self.engine.engine
        if adapter.error is None and engine is not None and engine.ready:
            try:  # this replica has the files already: loaded now rather than by the first request
                await engine.load(adapter.ref())
            except AdapterUnavailable:
                adapter = self.registry.quarantine(adapter, "the engine could not load it on this replica")
                log.error("published adapter %s/%s version %d quarantined: the engine could not load it",
                          version.owner, version.name, version.number)
        return adapter


def pack_adapter(folder: Path) -> bytes:
    """An adapter folder as the .tar.gz `POST /adapters` takes (its files at the top)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(folder.iterdir()):
            archive.add(path, arcname=path.name)
    return buffer.getvalue()
