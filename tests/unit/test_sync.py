"""Following the store's journal: a broken version is skipped (a newer one is tried), a store that fails for a
moment is tried again from the same line, a poll costs what changed, a new replica reads one snapshot and the
lines after it, and a store from before the journal is listed once."""

from __future__ import annotations

import asyncio
import json

from service.errors import GrammarInvalid
from service.journal import Journal
from service.store import DirectoryStore, StoreUnavailable, Version, Versions
from service.sync import StoreFollower


class _Publisher:
    kind = "dsls"

    def __init__(self, versions: Versions, *, unavailable_once: bool = False) -> None:
        self.versions = versions
        self.installed: dict[tuple[str, str], int] = {}
        self.served: dict[str, dict] = {}
        self.unavailable_once = unavailable_once

    async def install(self, version: Version) -> None:
        if self.unavailable_once:
            self.unavailable_once = False
            raise StoreUnavailable("the store is unavailable: ConnectTimeout")
        if version.deleted:
            self.served.pop(version.name, None)
        else:
            record = json.loads(self.versions.read(version))  # ValueError on what is not JSON
            if record.get("broken"):
                raise GrammarInvalid("<kv>:1:1: no")
            self.served[version.name] = record
        self.installed[(version.owner, version.name)] = version.number


class CountingStore(DirectoryStore):
    """A folder store that counts the calls a follower makes."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.calls: dict[str, int] = {"list": 0, "list_after": 0, "read": 0}

    def list(self, prefix):
        self.calls["list"] += 1
        return super().list(prefix)

    def list_after(self, prefix, after, limit):
        self.calls["list_after"] += 1
        return super().list_after(prefix, after, limit)

    def read(self, key):
        self.calls["read"] += 1
        return super().read(key)


def _publish(versions: Versions, journal: Journal, name: str, data: bytes | None) -> Version:
    version = versions.publish("dsls", "t", name, data, suffix="json")
    journal.record(version)
    return version


def _follower(store, publisher, **kwargs) -> StoreFollower:
    return StoreFollower(Versions(store), Journal(store), [publisher], poll_s=0.01, **kwargs)


def test_a_broken_or_unreadable_version_is_skipped_and_the_rest_served(tmp_path):
    store = DirectoryStore(tmp_path)
    versions, journal = Versions(store), Journal(store)
    _publish(versions, journal, "good", b'{"v": 1}')
    _publish(versions, journal, "broken", b'{"broken": true}')
    _publish(versions, journal, "garbage", b"not json")
    publisher = _Publisher(versions)
    follower = _follower(store, publisher)
    asyncio.run(follower.start())
    assert publisher.served == {"good": {"v": 1}}
    _publish(versions, journal, "broken", b'{"v": 2}')  # a newer version is tried
    _publish(versions, journal, "good", None)  # a deletion is followed
    asyncio.run(follower.sync_once())
    assert publisher.served == {"broken": {"v": 2}}


def test_a_store_that_fails_for_a_moment_is_tried_again_from_the_same_line(tmp_path):
    store = DirectoryStore(tmp_path)
    versions, journal = Versions(store), Journal(store)
    _publish(versions, journal, "kv", b'{"v": 1}')
    publisher = _Publisher(versions, unavailable_once=True)
    follower = _follower(store, publisher)

    async def follow_a_while() -> None:
        task = asyncio.create_task(follower.follow())
        await asyncio.sleep(0.3)
        task.cancel()

    asyncio.run(follow_a_while())
    assert publisher.served == {"kv": {"v": 1}} and follower.synced.is_set()


def test_a_poll_costs_what_changed_not_what_the_store_holds(tmp_path):
    costs = {}
    for items in (10, 1_000):
        store = CountingStore(tmp_path / str(items))
        versions, journal = Versions(store), Journal(store)
        for i in range(items):
            _publish(versions, journal, f"d{i}", b'{"v": 1}')
        follower = _follower(store, _Publisher(versions))
        asyncio.run(follower.start())
        store.calls = dict.fromkeys(store.calls, 0)
        asyncio.run(follower.sync_once())
        quiet = dict(store.calls)
        _publish(versions, journal, "new", b'{"v": 1}')
        store.calls = dict.fromkeys(store.calls, 0)
        asyncio.run(follower.sync_once())
        costs[items] = (quiet, dict(store.calls))
    assert costs[10] == costs[1_000]
    quiet, one_change = costs[1_000]
    assert quiet == {"list": 0, "list_after": 1, "read": 0}
    assert one_change["read"] == 2 and one_change["list"] == 0  # the line and the version it names


def test_a_new_replica_reads_one_snapshot_and_the_lines_after_it(tmp_path):
    store = CountingStore(tmp_path)
    versions, journal = Versions(store), Journal(store)
    writer = _follower(store, _Publisher(versions), snapshot_every=50)
    for i in range(120):
        _publish(versions, journal, f"d{i}", b'{"v": 1}')
        if i % 10 == 9:
            asyncio.run(writer.sync_once() if writer.synced.is_set() else writer.start())
            writer.synced.set()
    _publish(versions, journal, "d0", None)
    newcomer = _Publisher(versions)
    store.calls = dict.fromkeys(store.calls, 0)
    follower = _follower(store, newcomer)
    asyncio.run(follower.start())
    assert set(newcomer.served) == {f"d{i}" for i in range(1, 120)}
    lines_read = store.calls["read"] - len(newcomer.served) - 1  # less the versions themselves and the snapshot
    assert lines_read <= 50 + 10 and store.calls["list"] == 1  # the snapshots' listing, nothing of the items


def test_a_store_from_before_the_journal_is_listed_once_and_snapshotted(tmp_path):
    store = DirectoryStore(tmp_path)
    versions, journal = Versions(store), Journal(store)
    versions.publish("dsls", "t", "old", b'{"v": 1}', suffix="json")  # written without a journal line
    first = _Publisher(versions)
    asyncio.run(_follower(store, first).start())
    assert first.served == {"old": {"v": 1}}
    _publish(versions, journal, "new", b'{"v": 1}')
    later = _Publisher(versions)
    asyncio.run(_follower(store, later).start())
    assert set(later.served) == {"old", "new"}
