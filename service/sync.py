"""Follow the store: every replica serves the newest version of every published DSL and adapter.

Every ``store_poll_s`` seconds the store is listed; a version this replica does not serve yet is installed
(a DSL compiled in the grammar sandbox, an adapter unpacked and loaded into the engine), a deletion withdrawn.
A version that fails to install is logged and not retried until a newer one appears. A store that cannot be
reached stops nothing: what is installed keeps being served, and the next pass tries again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from service.errors import NL2DSLError, StoreUnavailable
from service.store import Version, Versions

__all__ = ["StoreFollower"]

log = logging.getLogger("nl2dsl.sync")


class Publisher(Protocol):
    kind: str
    installed: dict[tuple[str, str], int]

    async def install(self, version: Version) -> None: ...


class StoreFollower:
    def __init__(self, versions: Versions, publishers: list[Publisher], *, poll_s: float) -> None:
        self.versions = versions
        self.publishers = publishers
        self.poll_s = poll_s
        #: Set once a first pass over the store has finished (``/readyz`` waits for it).
        self.synced = asyncio.Event()
        self._failed: dict[tuple[str, str, str], int] = {}

    async def follow(self) -> None:
        """Pass over the store until cancelled."""
        while True:
            try:
                await self.sync_once()
                self.synced.set()
            except NL2DSLError as exc:
                log.warning("store: %s; serving what is installed", exc.message)
            except Exception:  # a bug must not stop this replica following the store for good
                log.exception("store: the pass failed; serving what is installed")
            await asyncio.sleep(self.poll_s)

    async def sync_once(self) -> None:
        for publisher in self.publishers:
            items = await asyncio.to_thread(self.versions.scan, publisher.kind)
            for (owner, name), history in items.items():
                newest = history[-1]
                key = (publisher.kind, owner, name)
                if publisher.installed.get((owner, name)) == newest.number or self._failed.get(key) == newest.number:
                    continue
                try:
                    await publisher.install(newest)
                except StoreUnavailable:
                    raise  # not the version's fault: the next pass tries again
                except NL2DSLError as exc:
                    self._failed[key] = newest.number
                    log.error("store: %s %s/%s version %d cannot be served: %s", publisher.kind, owner, name,
                              newest.number, exc.message)
                except (ValueError, KeyError, TypeError) as exc:  # a version that is not what we write
                    self._failed[key] = newest.number
                    log.error("store: %s %s/%s version %d is unreadable: %s: %s", publisher.kind, owner, name,
                              newest.number, type(exc).__name__, exc)
