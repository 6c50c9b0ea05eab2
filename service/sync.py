"""Follow the store's journal: every replica knows the newest version of every published DSL and adapter.

A replica starts from the journal's newest snapshot (one read, however much is published) and the lines after
it, then every ``store_poll_s`` seconds asks for the lines after the last it read (:mod:`service.journal`): a
poll costs what changed, not what exists. Each version is handed to its publisher once: a DSL is compiled in
the grammar sandbox, an adapter is registered from its journal line and its files fetched when a request first
needs it (:mod:`service.adapters.residency`), a deletion withdrawn. A version that fails to install is logged and
not retried; a newer version is. A store that cannot be reached stops nothing: what is installed keeps being
served, and the next poll starts again at the same line.

A store written before the journal existed has versions and no journal: the first replica to start lists it
once, as replicas did before, and writes that as the first snapshot.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from service.errors import NL2DSLError, StoreUnavailable
from service.journal import SNAPSHOT_EVERY, Journal
from service.store import Kind, Version, Versions

__all__ = ["StoreFollower"]

log = logging.getLogger("nl2dsl.sync")

_KINDS = tuple(Kind)


class Publisher(Protocol):
    kind: Kind
    installed: dict[tuple[str, str], int]

    async def install(self, version: Version) -> None: ...


class StoreFollower:
    def __init__(self, versions: Versions, journal: Journal, publishers: list[Publisher], *, poll_s: float,
                 snapshot_every: int = SNAPSHOT_EVERY) -> None:
        self.versions = versions
        self.journal = journal
        self.publishers = {p.kind: p for p in publishers}
        self.poll_s = poll_s
        self.snapshot_every = snapshot_every
        #: The newest version of every item this replica has read of, deletions included.
        self.index: dict[tuple[str, str, str], Version] = {}
        #: The last journal line read, and the last one a snapshot holds.
        self.read_upto = 0
        self.snapshot_upto = 0
        #: Set once the index is read (``/readyz`` waits for it): one snapshot and the lines after it.
        self.synced = asyncio.Event()

    async def follow(self) -> None:
        """Read the index, then follow the journal, until cancelled."""
        while True:
            try:
                if not self.synced.is_set():
                    await self.start()
                    self.synced.set()
                else:
                    await self.sync_once()
            except NL2DSLError as exc:
                log.warning("store: %s; serving what is installed", exc.message)
            except Exception:  # a bug must not stop this replica following the store for good
                log.exception("store: the pass failed; serving what is installed")
            await asyncio.sleep(self.poll_s)

    async def start(self) -> None:
        """Read the newest snapshot (or, on a store from before the journal, list it once) and the lines after."""
        snapshot = await asyncio.to_thread(self.journal.latest_snapshot)
        if snapshot is not None:
            versions, upto = snapshot.versions(), snapshot.upto
        elif await asyncio.to_thread(self.journal.read_after, 0, limit=1):
            versions, upto = [], 0  # a journal from its first line on
        else:
            versions, upto = await asyncio.to_thread(self._listed), 0
            await asyncio.to_thread(self.journal.write_snapshot, 0, versions)
        for version in versions:
            await self._apply(version)
        self.read_upto = self.snapshot_upto = max(self.read_upto, upto)
        await self.sync_once()

    async def sync_once(self) -> None:
        """Apply the journal's new lines; at every ``snapshot_every``-th line, the snapshot there (every replica
        offers the same one; the first written stays)."""
        while lines := await asyncio.to_thread(self.journal.read_after, self.read_upto):
            for number, version in lines:
                if version is not None:
                    await self._apply(version)
                self.read_upto = number
                if number % self.snapshot_every == 0 and number > self.snapshot_upto:
                    await asyncio.to_thread(self.journal.write_snapshot, number, list(self.index.values()))
                    self.snapshot_upto = number

    def _listed(self) -> list[Version]:
        """The newest version of every item, by listing the store (only for a store without a journal)."""
        return [history[-1] for kind in _KINDS for history in self.versions.scan(kind).values()]

    async def _apply(self, version: Version) -> None:
        key = (version.kind, version.owner, version.name)
        if (current := self.index.get(key)) is not None and current.number >= version.number:
            return
        publisher = self.publishers.get(version.kind)
        if publisher is not None and publisher.installed.get((version.owner, version.name)) != version.number:
            try:
                await publisher.install(version)
            except StoreUnavailable:
                raise  # not the version's fault: the next poll starts again at this line
            except NL2DSLError as exc:
                log.error("store: %s %s/%s version %d cannot be served: %s", version.kind, version.owner,
                          version.name, version.number, exc.message)
            except (ValueError, KeyError, TypeError) as exc:  # a version that is not what we write
                log.error("store: %s %s/%s version %d is unreadable: %s: %s", version.kind, version.owner,
                          version.name, version.number, type(exc).__name__, exc)
        self.index[key] = version
