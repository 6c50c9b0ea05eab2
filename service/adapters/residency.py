"""Published adapters' files on this replica: fetched the first time a request needs them, kept in a disk cache
bounded in bytes, the least recently used versions evicted.

A replica learns of a version from the store's journal (:mod:`service.sync`), whose line carries the adapter's
manifest and weights digest: that is enough to list it and route requests to it
(:meth:`AdapterRegistry.from_meta`), and nothing is downloaded. The first request that resolves to it waits for
:meth:`AdapterResidency.ensure`: one download shared by every request that needs it meanwhile, unpacked and
checked on the upload pool like an upload (the store is trusted no more than a tenant), its digest compared with
the journal's. That request's timings say how long the fetch took. The engine's own caches (``max_loras`` in the
batch, ``max_cpu_loras`` in host memory) stay its own LRU above this one.

A version is never evicted while a request that needs it is in flight (:meth:`AdapterResidency.ensure` holds it
until :meth:`AdapterResidency.release`): the engine may load an adapter again from its files while a request waits
in its queue, if its own host cache dropped it meanwhile. Should every cached version be held, the cache stays
over its bound until the next fetch after one is let go, and says so in the log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter, OrderedDict
from pathlib import Path

from service.adapters.archive import ArchiveRefused, unpack
from service.adapters.registry import Adapter, AdapterRegistry
from service.errors import AdapterUnavailable, BadRequest
from service.store import Version, Versions, tenant_of
from service.upload_pool import UploadPool

__all__ = ["AdapterResidency", "DiskCache"]

log = logging.getLogger("nl2dsl.adapters")

#: A half-unpacked folder older than this was left by a crash.
_STALE_S = 3600.0


class DiskCache:
    """Folders under ``root`` with their sizes, least recently used first; blocking calls (run them in a thread)."""

    def __init__(self, root: Path, *, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._sizes: OrderedDict[Path, int] = OrderedDict()
        self.bytes = 0  #: what the folders hold, kept with ``_sizes``
        self._held: Counter[Path] = Counter()
        self._lock = threading.Lock()  # touched on the event loop, filled and emptied in threads
        self.root.mkdir(parents=True, exist_ok=True)
        # What an earlier run left counts against the bound too (oldest first). A half-unpacked folder an hour
        # old is a crash's leftover and goes; a younger one may be another process's unpacking (replicas on one
        # machine may share the folder) and is left to it.
        now = time.time()
        for folder in sorted(self.root.iterdir(), key=lambda p: p.stat().st_mtime):
            if folder.is_dir() and (folder / "manifest.yaml").is_file():
                self._sizes[folder] = _size(folder)
                self.bytes += self._sizes[folder]
            elif ".partial-" in folder.name and now - folder.stat().st_mtime > _STALE_S:
                _remove(folder)

    def __contains__(self, folder: Path) -> bool:
        return folder in self._sizes

    def hold(self, folder: Path) -> bool:
        """Mark ``folder`` used now and keep it until :meth:`let_go`; whether it is cached (not held if not)."""
        with self._lock:
            if folder not in self._sizes:
                return False
            self._sizes.move_to_end(folder)
            self._held[folder] += 1
            return True

    def let_go(self, folder: Path) -> None:
        with self._lock:
            if folder in self._held:
                self._held[folder] -= 1
                if self._held[folder] <= 0:
                    del self._held[folder]

    def add(self, folder: Path) -> list[Path]:
        """Count a folder just filled (the most recent), then evict others past the bound; the folders evicted."""
        size = _size(folder)
        with self._lock:
            self.bytes += size - self._sizes.get(folder, 0)
            self._sizes[folder] = size
            self._sizes.move_to_end(folder)
            victims = self._victims(keep=folder)
        for victim in victims:
            _remove(victim)
        return victims

    def drop(self, folder: Path) -> None:
        """Remove ``folder`` now, unless a request holds it: then it stays until evicted like any other."""
        with self._lock:
            if folder in self._held:
                return
            self.bytes -= self._sizes.pop(folder, 0)
        _remove(folder)

    def _victims(self, *, keep: Path) -> list[Path]:
        """The least recently used folders no request holds, but ``keep``, to get under the bound (taken out of
        the count)."""
        victims = []
        for folder in list(self._sizes):
            if self.bytes <= self.max_bytes:
                break
            if folder != keep and folder not in self._held:
                self.bytes -= self._sizes.pop(folder)
                victims.append(folder)
        if self.bytes > self.max_bytes:
            log.warning("adapter cache: %d bytes, over its %d while requests hold every version in it",
                        self.bytes, self.max_bytes)
        return victims


class AdapterResidency:
    """Where each published adapter version's files are on this replica, and getting them there."""

    def __init__(self, registry: AdapterRegistry, versions: Versions, cache: DiskCache, *, pool: UploadPool,
                 max_adapter_bytes: int) -> None:
        self.registry = registry
        self.versions = versions
        self.cache = cache
        self.pool = pool
        self.max_adapter_bytes = max_adapter_bytes
        self._sources: dict[Path, Version] = {}
        self._fetching: dict[Path, asyncio.Task[Adapter]] = {}

    def folder(self, version: Version) -> Path:
        """Where ``version``'s files go: one folder per stored version."""
        return self.cache.root / hashlib.sha256(version.key.encode()).hexdigest()[:32]

    def expect(self, version: Version) -> Adapter:
        """Register ``version`` from its journal line, without its files (fetched on first use)."""
        folder = self.folder(version)
        self._sources[folder] = version
        return self.registry.from_meta(version.meta, owner=tenant_of(version.owner), name=version.name,
                                       version=version.number, folder=folder)

    async def place(self, version: Version, data: bytes) -> Adapter:
        """Put ``version``'s files (``data``, the archive) in the cache now and check them (a publish's own)."""
        folder = self.folder(version)
        self._sources[folder] = version
        adapter = await self.pool.run(tenant_of(version.owner), self._unpacked, data, folder, version)
        await asyncio.to_thread(self.cache.add, folder)
        return adapter

    async def adopt(self, version: Version, folder: Path, checked: Adapter) -> Adapter:
        """Take ``folder``, unpacked and checked by the publish that made ``version`` (``checked``: what that check
        found), as ``version``'s files: moved into the cache, neither unpacked nor checked again. ``folder`` must
        be on the cache's file system (:meth:`staging`)."""
        target = self.folder(version)
        self._sources[target] = version
        await asyncio.to_thread(_move, folder, target)
        await asyncio.to_thread(self.cache.add, target)
        return dataclasses.replace(checked, path=target.resolve(), version=version.number)

    def staging(self) -> tempfile.TemporaryDirectory:
        """A folder for an upload to unpack into, beside the cache's folders (a rename moves it in); one left by a
        crash is swept like a half-unpacked fetch."""
        return tempfile.TemporaryDirectory(prefix="upload.partial-", dir=self.cache.root)

    async def ensure(self, adapter: Adapter) -> float | None:
        """Make ``adapter``'s files present and hold them until :meth:`release`: None if they were here, else the
        seconds this request waited for the fetch. 409 if the fetched files are not what the journal recorded."""
        source = self._sources.get(adapter.path) if adapter.version is not None else None
        if source is None or self.cache.hold(adapter.path):  # a shipped adapter's folder is not the cache's
            return None
        started = time.perf_counter()
        while not self.cache.hold(adapter.path):  # evicted again before this request held it: fetched again
            task = self._fetching.get(adapter.path)
            if task is None:
                task = asyncio.create_task(self._fetch(adapter, source))
                self._fetching[adapter.path] = task
                task.add_done_callback(lambda _: self._fetching.pop(adapter.path, None))
            await asyncio.shield(task)  # a request that gives up does not cancel the others' fetch
        return time.perf_counter() - started

    def release(self, adapter: Adapter) -> None:
        """The request that :meth:`ensure` held ``adapter``'s files for has ended (even if the version has been
        replaced or withdrawn meanwhile)."""
        if adapter.version is not None:
            self.cache.let_go(adapter.path)

    async def forget(self, adapter: Adapter) -> None:
        """A withdrawn or replaced version: its files go (once no request in flight holds them)."""
        if adapter.version is not None and adapter.path in self._sources:
            self._sources.pop(adapter.path)
            await asyncio.to_thread(self.cache.drop, adapter.path)

    async def _fetch(self, adapter: Adapter, source: Version) -> Adapter:
        data = await asyncio.to_thread(self.versions.read, source)
        try:
            checked = await self.pool.run(adapter.owner, self._unpacked, data, adapter.path, source)
        except BadRequest as exc:
            checked = dataclasses.replace(adapter, error=exc.message)
        if checked.error is None and (checked.digest, checked.dsl, checked.tenants) != (
                adapter.digest, adapter.dsl, adapter.tenants):
            checked = dataclasses.replace(checked, error="its stored files are not what its journal line records")
        if checked.error is not None:
            await asyncio.to_thread(self.cache.drop, adapter.path)
            self.registry.quarantine(adapter, checked.error)
            log.error("published adapter %s version %s quarantined: %s", source.key, source.number, checked.error)
            raise AdapterUnavailable(f"adapter {adapter.name!r} cannot be served: {checked.error}",
                                     detail={"adapter": adapter.name})
        evicted = await asyncio.to_thread(self.cache.add, adapter.path)
        log.info("adapter %s version %d fetched (%d bytes)%s", adapter.name, source.number, len(data),
                 f"; {len(evicted)} evicted" if evicted else "")
        return checked

    def _unpacked(self, data: bytes, folder: Path, version: Version) -> Adapter:
        """On an upload thread: the archive unpacked into ``folder`` (beside it, then moved in) and checked."""
        if not (folder / "manifest.yaml").exists():
            partial = folder.with_name(f"{folder.name}.partial-{uuid.uuid4().hex[:8]}")
            partial.mkdir(parents=True)
            try:
                try:
                    unpack(data, partial, max_bytes=self.max_adapter_bytes)
                except ArchiveRefused as exc:
                    raise BadRequest(f"the stored archive is not an adapter: {exc}") from None
                if not (folder / "manifest.yaml").exists():
                    shutil.rmtree(folder, ignore_errors=True)
                    partial.replace(folder)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        return self.registry.read(folder, owner=tenant_of(version.owner), version=version.number)


def _move(folder: Path, target: Path) -> None:
    """``folder`` in ``target``'s place (one left there by an earlier attempt goes first)."""
    shutil.rmtree(target, ignore_errors=True)
    folder.replace(target)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
