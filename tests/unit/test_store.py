"""The store of published DSLs and adapters: both backends, through the same code production uses.

The S3 store talks to a real S3-protocol server (moto's standalone server) on loopback through boto3.
"""

from __future__ import annotations

import threading

import pytest
from moto.server import ThreadedMotoServer

from service.local_server import free_port
from service.store import DirectoryStore, S3Store, StoreUnavailable, Versions, open_store


@pytest.fixture(scope="module")
def s3_endpoint():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(params=["directory", "s3"])
def store(request, tmp_path, monkeypatch):
    if request.param == "directory":
        return DirectoryStore(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_endpoint")
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    bucket = f"nl2dsl-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return open_store(f"s3://{bucket}/replicas", endpoint_url=endpoint)


def test_versions_are_numbered_immutable_and_the_newest_is_current(store):
    versions = Versions(store)
    first = versions.publish("dsls", "contoso", "kv", b'{"v": 1}', suffix="json")
    second = versions.publish("dsls", "contoso", "kv", b'{"v": 2}', suffix="json")
    versions.publish("dsls", "fabrikam", "kv", b'{"other": 1}', suffix="json")
    assert (first.number, second.number) == (1, 2)
    assert [v.number for v in versions.history("dsls", "contoso", "kv")] == [1, 2]
    assert versions.read(first) == b'{"v": 1}'  # an earlier version is still there, unchanged
    scanned = versions.scan("dsls")
    assert set(scanned) == {("contoso", "kv"), ("fabrikam", "kv")} and scanned[("contoso", "kv")][-1] == second


def test_a_deletion_is_a_new_version_and_live_names_follow_the_newest(store):
    versions = Versions(store)
    versions.publish("adapters", "contoso", "crm", b"weights v1", suffix="tar.gz")
    versions.publish("adapters", "contoso", "old", b"weights v2", suffix="tar.gz")
    assert versions.live_names("adapters", "contoso") == {"crm", "old"}
    gone = versions.publish("adapters", "contoso", "old", None, suffix="tar.gz")
    assert gone.deleted and versions.history("adapters", "contoso", "old")[-1].deleted
    assert versions.live_names("adapters", "contoso") == {"crm"} and versions.live_names("adapters", "other") == set()
    versions.publish("adapters", "contoso", "old", b"weights v2", suffix="tar.gz")  # a rollback brings it back
    assert versions.live_names("adapters", "contoso") == {"crm", "old"}
    assert versions.owner_bytes("contoso") == len(b"weights v1") * 3


def test_replicas_publishing_at_once_never_overwrite_each_other(store):
    versions = Versions(store)
    threads = [threading.Thread(target=versions.publish, args=("dsls", "t", "same", f"{i}".encode()),
                                kwargs={"suffix": "json"}) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    history = versions.history("dsls", "t", "same")
    assert [v.number for v in history] == [1, 2, 3, 4, 5, 6]
    assert sorted(versions.read(v) for v in history) == [f"{i}".encode() for i in range(6)]


def test_a_store_that_cannot_be_reached_is_a_clear_503():
    versions = Versions(S3Store("nl2dsl", endpoint_url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(StoreUnavailable) as down:
        versions.scan("dsls")
    assert down.value.status_code == 503 and "unavailable" in down.value.message


def test_the_journal_numbers_changes_without_gaps_when_replicas_record_at_once(store):
    from service.journal import Journal

    versions = Versions(store)
    recorders = [Journal(store) for _ in range(4)]  # four replicas, each with its own idea of the newest line
    numbers: list[int] = []

    def record(journal: Journal, owner: str) -> None:
        for i in range(5):
            numbers.append(journal.record(versions.publish("dsls", owner, f"d{i}", b"{}", suffix="json")))

    threads = [threading.Thread(target=record, args=(j, f"t{n}")) for n, j in enumerate(recorders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(numbers) == list(range(1, 21))
    lines = Journal(store).read_after(0)
    assert [n for n, _ in lines] == list(range(1, 21))
    assert {(v.owner, v.name) for _, v in lines} == {(f"t{n}", f"d{i}") for n in range(4) for i in range(5)}
    assert [n for n, _ in Journal(store).read_after(17)] == [18, 19, 20]


def test_a_snapshot_holds_the_live_items_and_the_line_it_stands_at(store):
    from service.journal import Journal

    versions, journal = Versions(store), Journal(store)
    kept = versions.publish("adapters", "t", "crm", b"weights", suffix="tar.gz", meta={"digest": "ab"})
    gone = versions.publish("adapters", "t", "old", None, suffix="tar.gz")
    journal.write_snapshot(7, [kept, gone])
    journal.write_snapshot(3, [])
    snapshot = Journal(store).latest_snapshot()
    assert snapshot.upto == 7 and snapshot.versions() == [kept]
    assert snapshot.versions()[0].meta == {"digest": "ab"}
