"""Following the store: a broken version is skipped (not retried until a newer one), a store that fails for a
moment is tried again, and nothing stops a replica following the store."""

from __future__ import annotations

import asyncio
import json

from service.errors import GrammarInvalid
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
        record = json.loads(self.versions.read(version))  # ValueError on what is not JSON
        if record.get("broken"):
            raise GrammarInvalid("<kv>:1:1: no")
        self.installed[(version.owner, version.name)] = version.number
        self.served[version.name] = record


def test_a_broken_or_unreadable_version_is_skipped_and_the_rest_served(tmp_path):
    versions = Versions(DirectoryStore(tmp_path))
    versions.publish("dsls", "t", "good", b'{"v": 1}', suffix="json")
    versions.publish("dsls", "t", "broken", b'{"broken": true}', suffix="json")
    versions.publish("dsls", "t", "garbage", b"not json", suffix="json")
    publisher = _Publisher(versions)
    follower = StoreFollower(versions, [publisher], poll_s=0.01)
    asyncio.run(follower.sync_once())
    assert publisher.served == {"good": {"v": 1}}
    versions.publish("dsls", "t", "broken", b'{"v": 2}', suffix="json")  # a newer version is tried
    asyncio.run(follower.sync_once())
    assert publisher.served["broken"] == {"v": 2} and "garbage" not in publisher.served


def test_a_store_that_fails_for_a_moment_is_tried_again_on_the_next_pass(tmp_path):
    versions = Versions(DirectoryStore(tmp_path))
    versions.publish("dsls", "t", "kv", b'{"v": 1}', suffix="json")
    publisher = _Publisher(versions, unavailable_once=True)
    follower = StoreFollower(versions, [publisher], poll_s=0.01)

    async def follow_a_while() -> None:
        task = asyncio.create_task(follower.follow())
        await asyncio.sleep(0.3)
        task.cancel()

    asyncio.run(follow_a_while())
    assert publisher.served == {"kv": {"v": 1}} and follower.synced.is_set()
