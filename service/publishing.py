"""What DSLs and adapters share when a tenant makes a version live: one gate, per owner, for every path.

Publishing, adding examples and rolling back each write a new version that replicas then serve, so each goes
through :meth:`OwnerGate.publish`; deleting goes through :meth:`OwnerGate.withdraw`. The gate:

- takes one version of an owner at a time on this replica (8 concurrent ``POST /dsls`` with a limit of 3 gave
  8 x 201 when the count was read, then written, without a lock);
- allows ``per_minute`` changes per owner (publish/delete cycles were unlimited engine loads);
- counts the owner's live items of that kind and every byte the owner stores *in the store*, so the count is
  the same on every replica and a rollback counts like a publish (rollbacks once skipped both quotas);
- reads the count again after writing: should another replica have made a new item live at the same moment
  and the owner now holds more than allowed, the new item is withdrawn again (a deletion version) and the
  publish refused, so the limit holds across replicas without a lock server.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable

from service.errors import NotFound, QuotaExceeded
from service.journal import Journal
from service.store import Kind, Version, Versions

__all__ = ["OwnerGate"]

_WINDOW_S = 60.0


class OwnerGate:
    """Quotas and the rate of change per owner (a store owner key: a tenant, or the shared owner)."""

    def __init__(self, versions: Versions, journal: Journal, *, max_bytes: int, per_minute: int) -> None:
        self.versions = versions
        self.journal = journal
        self.max_bytes = max_bytes
        self.per_minute = per_minute
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._changes: dict[str, deque[float]] = defaultdict(deque)

    async def history(self, kind: Kind, owner: str, name: str, *, unknown: type[NotFound]) -> list[Version]:
        """The versions of ``owner``'s ``name``, oldest first; ``unknown`` (404) when it has none."""
        history = await asyncio.to_thread(self.versions.history, kind, owner, name)
        if not history:
            raise unknown(f"no published {_noun(kind)} {name!r} of yours", detail={"name": name})
        return history

    async def content(self, kind: Kind, owner: str, name: str, number: int, *, unknown: type[NotFound]) -> bytes:
        """What version ``number`` of ``owner``'s ``name`` holds (a rollback's content); ``unknown`` (404) when
        there is no such version or it is a deletion."""
        earlier = next((v for v in await self.history(kind, owner, name, unknown=unknown)
                        if v.number == number and not v.deleted), None)
        if earlier is None:
            raise unknown(f"{_noun(kind)} {name!r} of yours has no version {number}",
                          detail={"name": name, "version": number})
        return await asyncio.to_thread(self.versions.read, earlier)

    async def publish(self, kind: Kind, owner: str, name: str, data: bytes, *, suffix: str, max_items: int,
                      meta: dict | None = None, before_write: Callable[[], Awaitable[None]] | None = None) -> Version:
        """Write ``data`` as the next version of ``owner``'s ``name``, within the owner's quotas (429 past them),
        and record it in the journal with ``meta`` (service.journal).

        ``before_write`` (an adapter's trial load into the engine) runs once the rate and quotas have let the
        version through, and before it is written: a refused publish costs the engine nothing."""
        async with self._locks[owner]:
            self._count_change(owner)
            new = await asyncio.to_thread(self._admit, kind, owner, name, len(data), max_items)
            if before_write is not None:
                await before_write()
            return await asyncio.to_thread(self._write, kind, owner, name, data, suffix, max_items, new, meta)

    async def withdraw(self, kind: Kind, owner: str, name: str, *, suffix: str) -> Version:
        """Write a deletion of ``owner``'s ``name`` (counted against the rate of change)."""
        async with self._locks[owner]:
            self._count_change(owner)
            return await asyncio.to_thread(self._recorded, kind, owner, name, None, suffix)

    def _recorded(self, kind: Kind, owner: str, name: str, data: bytes | None, suffix: str,
                  meta: dict | None = None) -> Version:
        """A version written, then recorded in the journal (what other replicas follow)."""
        version = self.versions.publish(kind, owner, name, data, suffix=suffix, meta=meta)
        self.journal.record(version)
        return version

    def _count_change(self, owner: str) -> None:
        now = time.monotonic()
        changes = self._changes[owner]
        while changes and changes[0] < now - _WINDOW_S:
            changes.popleft()
        if len(changes) >= self.per_minute:
            retry = max(1, round(changes[0] + _WINDOW_S - now))
            raise QuotaExceeded(f"at most {self.per_minute} publishes, rollbacks and deletions a minute per tenant",
                                detail={"limit": "changes_per_minute", "max": self.per_minute},
                                headers={"Retry-After": str(retry)})
        changes.append(now)

    def _admit(self, kind: Kind, owner: str, name: str, size: int, max_items: int) -> bool:
        """Whether ``name`` is a new item; QuotaExceeded past the count or the bytes the owner may have."""
        live = self.versions.live_names(kind, owner)
        new = name not in live
        if new and len(live) >= max_items:
            raise _too_many(kind, max_items)
        if self.versions.owner_bytes(owner) + size > self.max_bytes:
            raise QuotaExceeded(f"the store holds at most {self.max_bytes} bytes per tenant",
                                detail={"limit": "store_bytes", "max": self.max_bytes})
        return new

    def _write(self, kind: Kind, owner: str, name: str, data: bytes, suffix: str, max_items: int,
               new: bool, meta: dict | None) -> Version:
        version = self._recorded(kind, owner, name, data, suffix, meta)
        if new and len(self.versions.live_names(kind, owner)) > max_items:  # another replica's at the same time
            self._recorded(kind, owner, name, None, suffix)
            raise _too_many(kind, max_items)
        return version


def _noun(kind: Kind) -> str:
    return "dsl" if kind == Kind.DSLS else "adapter"


def _too_many(kind: Kind, max_items: int) -> QuotaExceeded:
    return QuotaExceeded(f"at most {max_items} published {_noun(kind)}s per tenant; delete one first",
                         detail={"limit": "grammars" if kind == Kind.DSLS else str(kind), "max": max_items})
