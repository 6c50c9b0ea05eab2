"""Residency on demand: a replica registers what another publishes from the journal, fetches the files the first
time a request needs them (once, however many requests wait), keeps its disk cache within its bound, and refuses
files that are not what the journal recorded. Apps around a fake engine; the store, the journal, the checks and
the upload pool are real."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from service.adapters import AdapterRegistry, BaseShapes, DiskCache, pack_adapter
from service.config import Settings
from service.model import base_fingerprint, resolve_model
from tests.helpers import SMOLLM2, eventually, write_fake_adapter

BODY = {"dsl": "flow", "text": "post form answers to #sales", "adapter": "crm"}
ALPHA = {"Authorization": "Bearer alpha"}
FINGERPRINT = base_fingerprint(resolve_model(None, Settings().cache_dir))


def _archive(tmp_path: Path, name: str = "crm", weights: bytes = b"w") -> bytes:
    built = tmp_path / f"built-{weights.hex()}"
    built.mkdir()
    return pack_adapter(write_fake_adapter(built, name, fingerprint=FINGERPRINT, dsl="flow", weights=weights))


def _own_cache(tmp_path: Path, name: str) -> str:
    """A replica cache of its own (the embedded model linked in), so its disk shows what it fetched."""
    cache = tmp_path / name
    cache.mkdir()
    (cache / "models").symlink_to(Path(Settings().cache_dir) / "models")
    return str(cache)


def _files(cache: str) -> list[Path]:
    folder = Path(cache) / "published-adapters"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _knows_crm(client) -> bool:
    return "crm" in [a["name"] for a in client.get("/adapters", headers=ALPHA).json()]


def test_a_replica_fetches_a_published_adapter_when_a_request_first_needs_it(replica, tmp_path):
    first = replica()
    cache = _own_cache(tmp_path, "second-cache")
    second = replica(cache_dir=cache)
    assert first.post("/adapters", content=_archive(tmp_path), headers=ALPHA).status_code == 201
    eventually(lambda: _knows_crm(second), "the other replica lists the adapter")
    assert _files(cache) == []  # known from the journal line, nothing downloaded
    fetched = second.post("/generate", json=BODY, headers=ALPHA).json()
    assert fetched["adapter"] == "crm" and fetched["timings"]["fetch"] > 0
    again = second.post("/generate", json=BODY, headers=ALPHA).json()
    assert again["timings"]["fetch"] is None and len(_files(cache)) == 1
    assert second.engine.calls[-1]["adapter"].path == str(_files(cache)[0])


def test_requests_that_need_the_same_adapter_at_once_share_one_fetch(replica, tmp_path):
    first = replica()
    second = replica(cache_dir=_own_cache(tmp_path, "second-cache"))
    assert first.post("/adapters", content=_archive(tmp_path), headers=ALPHA).status_code == 201
    eventually(lambda: _knows_crm(second), "the other replica lists the adapter")
    residency = second.app.state.serving.residency
    reads = []
    original = residency.versions.read
    residency.versions.read = lambda version: reads.append(version) or original(version)
    adapter = next(a for a in second.app.state.adapters.all() if a.name == "crm")

    async def at_once():
        return await asyncio.gather(*(residency.ensure(adapter) for _ in range(8)))

    waited = second.portal.call(at_once)
    assert len(reads) == 1 and all(seconds is not None for seconds in waited)


def test_files_that_are_not_what_the_journal_recorded_are_refused_and_quarantined(replica, tmp_path):
    first = replica()
    second = replica(cache_dir=_own_cache(tmp_path, "second-cache"))
    assert first.post("/adapters", content=_archive(tmp_path), headers=ALPHA).status_code == 201
    eventually(lambda: _knows_crm(second), "the other replica lists the adapter")
    [stored] = (tmp_path / "store" / "adapters" / "alpha-corp" / "crm").iterdir()
    stored.write_bytes(_archive(tmp_path, weights=b"other weights"))  # the bucket changed under the journal
    refused = second.post("/generate", json=BODY, headers=ALPHA)
    assert refused.status_code == 409 and "journal" in refused.json()["error"]["message"]
    listed = {a["name"]: a for a in second.get("/adapters", headers=ALPHA).json()}
    assert listed["crm"]["available"] is False
    assert first.post("/generate", json=BODY, headers=ALPHA).status_code == 200  # it has the files it checked


def _folder(root: Path, name: str, size: int) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "manifest.yaml").write_text("name: x\n")
    (folder / "weights").write_bytes(b"x" * (size - 8))
    return folder


def test_the_disk_cache_stays_within_its_bytes_evicting_the_least_recently_used(tmp_path):
    root = tmp_path / "cache"
    folders = [_folder(root, f"v{n}", 1000) for n in range(4)]
    cache = DiskCache(root, max_bytes=2_500)  # what an earlier run left counts: 4 folders, oldest first
    assert cache.bytes == 4_000
    assert cache.hold(folders[0])  # used again: now the most recent
    cache.let_go(folders[0])
    new = _folder(root, "v4", 1000)
    evicted = cache.add(new)
    assert evicted == folders[1:4] and not any(f.exists() for f in evicted)
    assert cache.bytes <= 2_500 and folders[0] in cache and new in cache


def test_a_version_a_request_holds_is_never_evicted(tmp_path):
    root = tmp_path / "cache"
    cache = DiskCache(root, max_bytes=1_000)
    held = _folder(root, "held", 800)
    cache.add(held)
    assert cache.hold(held)  # a request is about to load it
    assert cache.add(_folder(root, "next", 800)) == [] and held.exists() and cache.bytes == 1_600
    cache.let_go(held)
    cache.let_go(root / "next")
    assert cache.add(_folder(root, "third", 800)) == [held, root / "next"] and cache.bytes == 800


def test_half_unpacked_folders_left_by_a_crash_are_removed_at_start_not_one_being_unpacked(tmp_path):
    root = tmp_path / "cache"
    (root / "ab.partial-1234").mkdir(parents=True)
    os.utime(root / "ab.partial-1234", (time.time() - 7200, time.time() - 7200))  # a crash's, two hours ago
    (root / "cd.partial-5678").mkdir()  # another replica's on this machine, unpacking now
    assert DiskCache(root, max_bytes=10).bytes == 0 and [p.name for p in root.iterdir()] == ["cd.partial-5678"]


_META = st.fixed_dictionaries({}, optional={
    "manifest": st.one_of(st.none(), st.text(max_size=5), st.fixed_dictionaries(
        {"base_model": st.fixed_dictionaries({"fingerprint": st.sampled_from([FINGERPRINT, "0" * 16, "nope"])})},
        optional={"name": st.text(max_size=10), "dsl": st.sampled_from(["flow", "", "../x"]),
                  "tenants": st.lists(st.sampled_from(["*", "alpha-corp", "beta-corp"]), max_size=3),
                  "rank": st.integers(-5, 10**6)})),
    "digest": st.one_of(st.just("a" * 64), st.text(max_size=70), st.integers()),
    "rank": st.one_of(st.integers(-5, 10**6), st.text(max_size=3), st.none()),
})


@settings(max_examples=150, deadline=None)
@given(meta=_META, owner=st.sampled_from([None, "alpha-corp"]))
def test_any_journal_meta_becomes_an_adapter_or_its_error_and_a_tenants_stays_its_own(meta, owner):
    registry = AdapterRegistry(None, base_fingerprint=FINGERPRINT, base=BaseShapes(**SMOLLM2), max_rank=64)
    adapter = registry.from_meta(meta, owner=owner, name="crm", version=1, folder=Path("/nowhere"))
    assert adapter.name == "crm" and adapter.version == 1
    if owner is not None:
        assert adapter.tenants == (owner,)  # whatever the line says: a tenant's adapter serves that tenant
    if adapter.error is None:
        assert adapter.lora_id > 0 and adapter.digest == "a" * 64 and 1 <= adapter.rank <= 64




KV = 'start: pair ("\\n" pair)*\npair: KEY "=" VALUE\nKEY: /[a-z]+/\nVALUE: /[a-z0-9]+/\n'


def _counting_compiles(client) -> list[str]:
    """The grammar sources this replica's sandbox compiles from now on."""
    sandbox = client.app.state.grammars.sandbox
    compiled, original = [], sandbox.compile

    async def compile(text, **kwargs):
        compiled.append(kwargs.get("source"))
        return await original(text, **kwargs)

    sandbox.compile = compile
    return compiled


def test_a_replica_compiles_a_dsl_another_published_only_when_a_request_needs_it(replica):
    first, second = replica(), replica()
    compiled = _counting_compiles(second)
    upload = {"name": "kv", "grammar": KV, "examples": [{"text": "listen on port 80", "code": "port=80"}]}
    assert first.post("/dsls", json=upload, headers=ALPHA).status_code == 201
    eventually(lambda: second.app.state.grammars.pending("alpha-corp") == ["kv"], "the other replica knows of it")
    assert compiled == []  # known from the journal, not compiled
    answer = second.post("/generate", json={"dsl": "kv", "text": "set the port to 80"}, headers=ALPHA)
    assert answer.status_code == 200 and answer.json()["dsl"] == "kv"
    assert "port=80" in _prompt_of(second)  # its examples reached retrieval when it was compiled
    assert second.get("/dsls/kv", headers=ALPHA).json()["grammar"] == KV
    assert compiled == ["<kv>"] and second.app.state.grammars.pending("alpha-corp") == []


def test_a_tenant_sees_its_pending_dsls_listed_and_can_change_them(replica):
    first, second = replica(), replica()
    assert first.post("/dsls", json={"name": "kv", "grammar": KV}, headers=ALPHA).status_code == 201
    eventually(lambda: second.app.state.grammars.pending("alpha-corp") == ["kv"], "the other replica knows of it")
    assert "kv" in [d["name"] for d in second.get("/dsls", headers=ALPHA).json()]
    assert "kv" not in [d["name"] for d in second.get("/dsls", headers={"Authorization": "Bearer beta"}).json()]
    added = second.post("/dsls/kv/examples", content=b'{"text": "port 80", "code": "port=80"}\n',
                        headers={**ALPHA, "Content-Type": "application/jsonl"})
    assert added.status_code in (200, 201), added.text


def test_at_most_max_compiled_dsls_stay_compiled_and_the_others_compile_again_when_needed(replica):
    first, second = replica(), replica(max_compiled_dsls=2)
    for name in ("kv1", "kv2", "kv3"):
        assert first.post("/dsls", json={"name": name, "grammar": KV}, headers=ALPHA).status_code == 201
    eventually(lambda: len(second.app.state.grammars.pending("alpha-corp")) == 3, "the other replica knows of them")
    for name in ("kv1", "kv2", "kv3", "kv1"):
        checked = second.post("/validate", json={"dsl": name, "code": "port=80"}, headers=ALPHA)
        assert checked.status_code == 200 and checked.json()["valid"] is True
    grammars = second.app.state.grammars
    assert [g.name for g in grammars.uploads("alpha-corp")] == ["kv1", "kv3"]
    assert grammars.pending("alpha-corp") == ["kv2"]


def _prompt_of(client) -> str:
    return client.app.state.serving.tokenizer.decode(client.engine.calls[-1]["prompt_token_ids"])


def test_a_replaced_version_a_request_still_holds_keeps_its_files_until_it_ends(tmp_path):
    root = tmp_path / "cache"
    cache = DiskCache(root, max_bytes=10_000)
    old = _folder(root, "old", 800)
    cache.add(old)
    assert cache.hold(old)  # by a request in flight
    cache.drop(old)  # a newer version was installed meanwhile
    assert old.exists() and old in cache
    cache.let_go(old)
    cache.drop(old)
    assert not old.exists() and old not in cache


def test_a_dsl_version_that_arrives_while_the_last_one_compiles_is_the_one_served(tmp_path):
    from service.grammars import GrammarRegistry
    from service.grammars.grammar import Grammar
    from service.store import Version

    class Store:  # the two versions' records, as the store holds them
        def read(self, version: Version) -> bytes:
            return json.dumps({"name": "kv", "owner": "alpha-corp", "grammar": f"v{version.number}",
                               "start": "start"}).encode()

    registry = GrammarRegistry(Settings().grammars_dir, versions=Store())
    v1, v2 = (Version("dsls", "alpha-corp", "kv", n, 1, f"dsls/alpha-corp/kv/0000000{n}.json",
                      meta={"description": "kv"}) for n in (1, 2))
    compiled = []

    async def compile_upload(record, *, version):
        if version == 1:
            registry.add_pending(v2, owner="alpha-corp")  # published while version 1 compiles
        await asyncio.sleep(0)
        compiled.append(version)
        return Grammar(name="kv", description="", text=record["grammar"], engine_text="", examples=(),
                       version=version, origin="upload"), ()

    registry.compile_upload = compile_upload
    registry.add_pending(v1, owner="alpha-corp")
    served = asyncio.run(registry.resolve("kv", tenant="alpha-corp"))
    assert compiled == [1, 2] and served.version == 2 and served.text == "v2"


def test_naming_the_models_compiles_no_pending_dsl(replica):
    first, second = replica(), replica()
    compiled = _counting_compiles(second)
    assert first.post("/dsls", json={"name": "kv", "grammar": KV}, headers=ALPHA).status_code == 201
    eventually(lambda: second.app.state.grammars.pending("alpha-corp") == ["kv"], "the other replica knows of it")
    models = {m["id"]: m for m in second.get("/v1/models", headers=ALPHA).json()["data"]}
    assert models["kv"]["owned_by"] == "alpha-corp" and compiled == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "hold", "let_go", "drop"]), st.integers(0, 5),
                          st.integers(1, 400)), max_size=40))
def test_the_disk_cache_counts_exactly_what_its_folders_hold_and_never_evicts_a_held_one(tmp_path_factory, steps):
    """Any order of fills, holds, releases and drops (a tenant's requests decide it): the kept byte count is the
    sum of the folders on disk, a held folder is never evicted, and the cache is over its bound only by held or
    just-added folders."""
    root = tmp_path_factory.mktemp("cache")
    cache = DiskCache(root, max_bytes=1000)
    held: dict[Path, int] = {}
    for action, n, size in steps:
        folder = root / f"v{n}"
        if action == "add":
            folder.mkdir(exist_ok=True)
            (folder / "manifest.yaml").write_text("x")
            (folder / "weights").write_bytes(b"\0" * size)
            evicted = cache.add(folder)
            assert folder not in evicted and not any(v in held for v in evicted)
        elif action == "hold" and cache.hold(folder):
            held[folder] = held.get(folder, 0) + 1
        elif action == "let_go" and held.get(folder):
            cache.let_go(folder)
            held[folder] -= 1
            if not held[folder]:
                del held[folder]
        elif action == "drop":
            cache.drop(folder)
        on_disk = [f for f in root.iterdir() if f.is_dir() and f in cache]
        assert cache.bytes == sum(sum(p.stat().st_size for p in f.rglob("*") if p.is_file()) for f in on_disk)
        assert all(f.is_dir() for f in held)
