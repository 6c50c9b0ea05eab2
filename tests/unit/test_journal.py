"""Journal lines someone else wrote (a compromised replica, a hand-edited bucket) are read as typed lines: what is
not one this service writes is skipped, never a crash, never another owner's item."""

from __future__ import annotations

import asyncio
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.journal import Journal
from service.store import DirectoryStore, Version, Versions
from service.sync import StoreFollower

_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=4), max_leaves=20)
_LINE_FIELDS = st.fixed_dictionaries({}, optional={
    "kind": st.sampled_from(["dsls", "adapters", "secrets", ""]),
    "owner": st.sampled_from(["alpha", "beta", "", "../x"]),
    "name": st.sampled_from(["crm", "kv", "a/b"]),
    "number": st.integers(-2, 10**9),
    "key": st.sampled_from(["dsls/alpha/kv/00000001.json", "adapters/beta/crm/00000001.tar.gz", "../../etc/passwd",
                            "adapters/alpha/crm/00000001.tar.gz"]),
    "size": st.integers(-1, 10**6),
    "meta": _JSON,
})


class _Recorder:
    kind = "adapters"

    def __init__(self) -> None:
        self.installed: dict[tuple[str, str], int] = {}
        self.seen: list[Version] = []

    async def install(self, version: Version) -> None:
        self.seen.append(version)
        self.installed[(version.owner, version.name)] = version.number


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hostile=st.lists(st.one_of(st.binary(max_size=200), _LINE_FIELDS.map(lambda d: json.dumps(d).encode()),
                                  _JSON.map(lambda d: json.dumps(d).encode())), min_size=1, max_size=6))
def test_hostile_lines_are_skipped_and_the_real_ones_still_followed(tmp_path_factory, hostile):
    store = DirectoryStore(tmp_path_factory.mktemp("store"))
    versions, journal = Versions(store), Journal(store)
    for data in hostile:  # taken numbers, as a writer that bypasses the service would take them
        number = journal.known + 1
        store.create(f"journal/{number:012d}.json", data)
        journal.known = number
    real = versions.publish("adapters", "alpha", "crm", b"weights", suffix="tar.gz", meta={"digest": "x"})
    journal.record(real)
    recorder = _Recorder()
    follower = StoreFollower(versions, Journal(store), [recorder], poll_s=0.01)
    asyncio.run(follower.start())
    assert real in recorder.seen and follower.read_upto == len(hostile) + 1
    for version in recorder.seen:  # whatever else got through names its own owner's item, where it lives
        assert version.key.startswith(f"{version.kind}/{version.owner}/{version.name}/{version.number:08d}.")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(snapshot=st.one_of(st.binary(max_size=300), _JSON.map(lambda d: json.dumps(d).encode()),
                          st.builds(lambda upto, items: json.dumps({"upto": upto, "items": items}).encode(),
                                    st.sampled_from([-1, 0, 2, 4]), st.lists(_LINE_FIELDS, max_size=3))))
def test_a_snapshot_that_is_not_one_we_write_is_passed_over_for_the_lines(tmp_path_factory, snapshot):
    """Snapshots are the replicas' own writing, trusted as versions are; one that is malformed, or whose number
    is not where it says it stands, is passed over, and a new replica reads the journal's lines instead."""
    store = DirectoryStore(tmp_path_factory.mktemp("store"))
    versions, journal = Versions(store), Journal(store)
    real = [versions.publish("adapters", "alpha", f"a{i}", b"w", suffix="tar.gz", meta={"digest": "x"})
            for i in range(3)]
    for version in real:
        journal.record(version)
    store.create("journal-index/000000000003.json", snapshot)  # at the last line's number
    recorder = _Recorder()
    asyncio.run(StoreFollower(versions, Journal(store), [recorder], poll_s=0.01).start())
    assert set(real) <= set(recorder.seen)
