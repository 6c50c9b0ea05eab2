"""Every door a tenant pushes bytes through, tried as a hostile tenant would (docs/SECURITY.md, 13-13j).

Around a fake engine: the store, the grammar sandbox, the upload pool and the checks are real. Each test is
named after the attack it stops; the property-based ones generate hostile inputs and assert the same three
things every time: a 4xx with the error shape (never a 5xx), nothing stored, /healthz still answering.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import struct
import tarfile
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.adapters import BaseShapes, pack_adapter
from service.config import Settings
from service.grammars.worker import _ParserCache
from service.model import base_fingerprint, resolve_model
from service.security import KeyStore, hash_key
from tests.helpers import SMOLLM2, eventually, metric_value, write_fake_adapter, write_fake_weights

A_PREFIX = "base_model.model.model.layers.0.self_attn.q_proj"
KV = 'start: pair ("\\n" pair)*\npair: KEY "=" VALUE\nKEY: /[a-z]+/\nVALUE: /[a-z0-9]+/\n'
HOSTILE = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _fingerprint() -> str:
    return base_fingerprint(resolve_model(None, Settings().cache_dir))


def _folder(tmp_path: Path, name: str = "crm", **kwargs) -> Path:
    root = tmp_path / f"built-{name}-{len(list(tmp_path.glob('built-*')))}"
    root.mkdir()
    return write_fake_adapter(root, name, fingerprint=_fingerprint(), **kwargs)


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _stored(tmp_path: Path, kind: str = "adapters") -> list[str]:
    root = tmp_path / "store" / kind
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _refused(response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


# 13: adapter slot theft -----------------------------------------------------------------------------------

def test_an_adapter_with_a_tensor_one_column_too_wide_is_refused_naming_the_tensor_and_nothing_is_stored(
        replica, tmp_path):
    folder = _folder(tmp_path, rank=16)
    write_fake_weights(folder, b"w", rank=16, shapes={f"{A_PREFIX}.lora_A.weight": [16, 577]})
    client = replica()
    error = _refused(client.post("/adapters", content=pack_adapter(folder), headers=_auth("alpha")))
    assert f"{A_PREFIX}.lora_A.weight" in error["message"] and "[16, 576]" in error["message"]
    assert _stored(tmp_path) == []
    assert "crm" not in [a["name"] for a in client.get("/adapters", headers=_auth("alpha")).json()]


@pytest.mark.parametrize("problem, shapes, config", [
    ("layer 30", {"base_model.model.model.layers.30.self_attn.q_proj.lora_A.weight": [8, 576],
                  "base_model.model.model.layers.30.self_attn.q_proj.lora_B.weight": [576, 8]}, {}),
    ("not a LoRA weight", {"base_model.model.lm_head.weight": [8, 8]}, {}),
    ("not in target_modules", {"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": [8, 576],
                               "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight": [1536, 8]}, {}),
    ("without the other", {"base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight": [8, 576]}, {}),
    ("rank 8", {}, {"r": 8, "target_modules": ["q_proj"], "use_dora": True}),
    ("target_modules", {}, {"r": 8, "target_modules": ["embed_tokens"]}),
])
def test_weights_and_configs_the_base_cannot_run_are_refused_with_the_reason(replica, tmp_path, problem, shapes,
                                                                             config):
    folder = _folder(tmp_path)
    write_fake_weights(folder, b"w", shapes=shapes)
    if config:
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "lora_alpha": 16, **config}))
    error = _refused(replica().post("/adapters", content=pack_adapter(folder), headers=_auth("alpha")))
    assert error["type"] == "bad_request"
    assert problem in error["message"] or "use_dora" in error["message"], error["message"]
    assert _stored(tmp_path) == []


def test_two_adapters_never_share_an_engine_id_even_with_the_same_weights(replica, tmp_path):
    client = replica()
    for key in ("alpha", "beta"):  # the same archive, two owners: once one crc32 of name + weights apart
        assert client.post("/adapters", content=pack_adapter(_folder(tmp_path)), headers=_auth(key)).status_code == 201
    ids = [a.lora_id for a in client.app.state.adapters.all()]
    assert len(ids) == len(set(ids))


# 13b: YAML alias bomb ---------------------------------------------------------------------------------------

def test_a_yaml_alias_bomb_manifest_is_refused_without_expanding_or_echoing_it(replica, tmp_path):
    folder = _folder(tmp_path)
    bomb = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))
    files = {**_files(folder), "manifest.yaml": (folder / "manifest.yaml").read_text().encode() + bomb.encode()}
    assert len(files["manifest.yaml"]) < 1024
    client = replica()
    error = _refused(client.post("/adapters", content=_tar(files), headers=_auth("alpha")))
    assert "anchors" in error["message"] and "lol" not in json.dumps(error)
    assert client.get("/healthz").status_code == 200 and _stored(tmp_path) == []


@pytest.mark.parametrize("manifest, field", [
    ("- name: crm\n- rank: 16\n", "the document"),
    ("name: crm\nrank: sixteen\nbase_model: {fingerprint: 0123456789abcdef}\n", "rank"),
    ("name: crm\nbase_model: d7e5b537dd607d63\n", "base_model"),
    ("name: crm\ndsl: [flow]\nbase_model: {fingerprint: 0123456789abcdef}\n", "dsl"),
    ("name: crm\ntenants: [{a: b}]\nbase_model: {fingerprint: 0123456789abcdef}\n", "tenants"),
    ("name: [[[[[[[[[[[[x]]]]]]]]]]]]\n", "nested deeper"),
])
def test_a_manifest_of_the_wrong_shape_is_a_400_naming_the_field_and_nothing_is_stored(replica, tmp_path, manifest,
                                                                                        field):
    files = {**_files(_folder(tmp_path)), "manifest.yaml": manifest.encode()}
    client = replica()
    error = _refused(client.post("/adapters", content=_tar(files), headers=_auth("alpha")))
    assert field in error["message"], error["message"]
    assert _stored(tmp_path) == []
    for key in ("alpha", "admin"):  # a `dsl: [flow]` once got published, then broke GET /adapters for both
        assert client.get("/adapters", headers=_auth(key)).status_code == 200


def _header(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


@pytest.mark.parametrize("weights, reason", [
    (_header(b"[" * 50_000 + b"]" * 50_000), "not valid JSON"),
    (_header(b"[1, 2]"), "not a JSON object"),
    (_header(json.dumps({f"{A_PREFIX}.lora_A.weight": {"dtype": "F32", "shape": [8, 576]}}).encode()),
     "data_offsets"),
    (_header(json.dumps({f"{A_PREFIX}.lora_A.weight": {"dtype": "F64", "shape": [8, 576],
                                                        "data_offsets": [0, 8]}}).encode()), "dtype"),
    (b"\xff" * 8 + b"{}", "cut short"),
])
def test_a_safetensors_header_deep_wrong_or_cut_short_is_a_400(replica, tmp_path, weights, reason):
    files = {**_files(_folder(tmp_path)), "adapter_model.safetensors": weights}
    error = _refused(replica().post("/adapters", content=_tar(files), headers=_auth("alpha")))
    assert reason in error["message"], error["message"]
    assert _stored(tmp_path) == []


# 13c: archive bombs -----------------------------------------------------------------------------------------

def _zeros_bomb(size: int) -> bytes:
    info = tarfile.TarInfo("adapter_model.safetensors")
    info.size = size
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(info.tobuf(format=tarfile.GNU_FORMAT))]
    block = bytes(1 << 20)
    parts += [compressor.compress(block) for _ in range(size >> 20)]
    return b"".join(parts) + compressor.flush()


def test_a_gzip_bomb_is_refused_at_the_first_bound_without_unpacking_it(replica, tmp_path):
    bomb = _zeros_bomb(2 << 30)  # 2 GiB of zeros in ~2 MB
    assert len(bomb) < 3 << 20
    client = replica()
    error = _refused(client.post("/adapters", content=bomb, headers=_auth("alpha")))
    assert "unpacks to more than" in error["message"]
    assert not list((tmp_path / "cache").glob("published-adapters/*")) and _stored(tmp_path) == []


def test_an_archive_of_a_million_folders_stops_at_the_member_bound(replica, tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for i in range(20_000):
            info = tarfile.TarInfo(f"d{i}")
            info.type = tarfile.DIRTYPE
            archive.addfile(info)
    error = _refused(replica().post("/adapters", content=buffer.getvalue(), headers=_auth("alpha")))
    assert "more than 16 members" in error["message"]


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_links_and_devices_in_an_archive_are_refused(replica, kind):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("manifest.yaml")
        info.type, info.linkname = kind, "/etc/passwd"
        archive.addfile(info)
    assert "link or device" in _refused(replica().post("/adapters", content=buffer.getvalue(),
                                                       headers=_auth("alpha")))["message"]


def test_uploads_run_on_their_own_pool_and_one_tenant_cannot_take_all_of_it(replica, tmp_path, monkeypatch):
    """Six bombs at once once held the default executor that /generate's steps share. Uploads have threads of
    their own, a tenant at most one of them with four more queued: its seventh is a 429, and another tenant's
    upload and /generate go on meanwhile."""
    import service.adapters.uploads as uploads

    release, started = threading.Event(), threading.Semaphore(0)
    real_unpack, threads = uploads.unpack_confined, set()

    def slow_unpack(data, folder, **kwargs):
        threads.add(threading.current_thread().name)
        if data == b"held":
            started.release()
            release.wait(30)
            raise uploads.ArchiveRefused("held")
        return real_unpack(data, folder, **kwargs)

    monkeypatch.setattr(uploads, "unpack_confined", slow_unpack)
    client = replica()
    with ThreadPoolExecutor(8) as pool:
        held = [pool.submit(client.post, "/adapters", content=b"held", headers=_auth("alpha")) for _ in range(5)]
        assert started.acquire(timeout=30)  # alpha holds its one thread; four more of alpha's wait
        # Until all five reached the pool (a post sent before would be queued and wait for the release).
        eventually(lambda: client.app.state.adapter_publisher.pool.queued("alpha-corp") == 5, "five queued")
        seventh = client.post("/adapters", content=b"held", headers=_auth("alpha"))
        assert seventh.status_code == 429
        assert seventh.json()["error"]["detail"]["limit"] == "uploads_in_progress"
        beta = client.post("/adapters", content=pack_adapter(_folder(tmp_path)), headers=_auth("beta"))
        generated = client.post("/generate", json={"dsl": "flow", "text": "post to #sales"}, headers=_auth("beta"))
        release.set()
        statuses = sorted(f.result().status_code for f in held)
    assert beta.status_code == 201 and generated.status_code == 200
    assert statuses == [400] * 5
    assert threads and all(name.startswith("nl2dsl-upload") for name in threads)


# 13d: examples bomb -----------------------------------------------------------------------------------------

@pytest.fixture()
def kv(replica):
    client = replica(max_example_lines=1000, max_rejected_lines=50)
    assert client.post("/dsls", json={"name": "kv", "grammar": KV}, headers=_auth("alpha")).status_code == 201
    return client


def test_two_million_bad_example_lines_are_refused_whole_with_a_small_answer(kv, tmp_path):
    before = _stored(tmp_path, "dsls")
    r = kv.post("/dsls/kv/examples", content=b"x\n" * 2_000_000, headers=_auth("alpha"))
    error = _refused(r, 422)
    assert "at most 1000 lines" in error["message"] and len(r.content) < 2000
    r = kv.post("/dsls/kv/examples", content=b"x\n" * 900, headers=_auth("alpha"))
    assert "more than 50 lines" in _refused(r, 422)["message"] and len(r.content) < 2000
    assert _stored(tmp_path, "dsls") == before
    assert kv.get("/healthz").status_code == 200


def test_a_partly_bad_examples_body_lists_the_first_rejects_and_counts_them_all(kv):
    good = [json.dumps({"text": f"set key to {i}", "code": f"key=v{i}"}) for i in range(5)]
    body = "\n".join(good + ["nope"] * 30 + [json.dumps({"text": "t", "code": "a=b", "context": {"x": 1}})])
    answer = kv.post("/dsls/kv/examples", content=body, headers=_auth("alpha")).json()
    assert answer["added"] == 5 and answer["rejected_count"] == 31 and len(answer["rejected"]) == 20
    assert kv.get("/dsls", headers=_auth("alpha")).status_code == 200  # a context object once broke the listing


# 13f: quotas ------------------------------------------------------------------------------------------------

def test_a_rollback_cannot_bring_back_a_dsl_past_the_count_limit(replica):
    client = replica(max_grammars_per_tenant=2)
    for name in ("one", "two"):
        assert client.post("/dsls", json={"name": name, "grammar": KV}, headers=_auth("alpha")).status_code == 201
    assert client.delete("/dsls/one", headers=_auth("alpha")).status_code == 204
    assert client.post("/dsls", json={"name": "three", "grammar": KV}, headers=_auth("alpha")).status_code == 201
    error = _refused(client.post("/dsls/one/rollback", json={"version": 1}, headers=_auth("alpha")), 429)
    assert error["type"] == "quota_exceeded" and error["detail"]["limit"] == "grammars"
    assert len([d for d in client.get("/dsls", headers=_auth("alpha")).json() if d["origin"] == "upload"]) == 2


def test_adapter_rollbacks_count_against_the_stored_bytes(replica, tmp_path):
    archive = pack_adapter(_folder(tmp_path))
    assert replica().post("/adapters", content=archive, headers=_auth("alpha")).status_code == 201
    [stored] = (tmp_path / "store" / "adapters" / "alpha-corp" / "crm").iterdir()  # repacked: its own size
    client = replica(max_store_bytes_per_tenant=2 * stored.stat().st_size + 10)  # room for one rollback
    assert client.post("/adapters/crm/rollback", json={"version": 1}, headers=_auth("alpha")).status_code == 200
    error = _refused(client.post("/adapters/crm/rollback", json={"version": 1}, headers=_auth("alpha")), 429)
    assert error["detail"]["limit"] == "store_bytes"


def test_concurrent_publishes_cannot_pass_the_count_limit(replica):
    client = replica(max_grammars_per_tenant=3)
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: client.post("/dsls", json={"name": f"g{i}", "grammar": KV},
                                                       headers=_auth("alpha")).status_code, range(8)))
    assert sorted(statuses) == [201] * 3 + [429] * 5


def test_publishes_are_rate_limited_per_tenant(replica, tmp_path):
    client = replica(publishes_per_minute=3)
    archive = pack_adapter(_folder(tmp_path))
    for _ in range(3):
        client.post("/adapters", content=archive, headers=_auth("alpha"))
    limited = client.post("/adapters", content=archive, headers=_auth("alpha"))
    assert _refused(limited, 429)["detail"]["limit"] == "changes_per_minute" and int(limited.headers["retry-after"]) > 0
    assert client.delete("/adapters/crm", headers=_auth("alpha")).status_code == 429  # deletions count too
    assert client.post("/adapters", content=archive, headers=_auth("beta")).status_code == 201  # per tenant


def test_a_publish_refused_by_its_quota_never_reaches_the_engine(replica, tmp_path):
    client = replica(max_adapters_per_tenant=1)
    assert client.post("/adapters", content=pack_adapter(_folder(tmp_path, "first")),
                       headers=_auth("alpha")).status_code == 201
    assert client.engine.load.await_count >= 1  # the trial load, before the version was written
    client.engine.load.reset_mock()
    refused = client.post("/adapters", content=pack_adapter(_folder(tmp_path, "second")), headers=_auth("alpha"))
    assert _refused(refused, 429)["detail"]["limit"] == "adapters"
    assert client.engine.load.await_count == 0


def test_a_new_item_another_replica_raced_past_the_limit_is_withdrawn_not_served(replica, monkeypatch):
    client = replica(max_grammars_per_tenant=1)
    versions = client.app.state.dsl_publisher.versions
    real = versions.live_names
    calls = {"n": 0}

    def racing(kind, owner):  # the first count misses the item another replica made live meanwhile
        calls["n"] += 1
        live = real(kind, owner)
        return live if calls["n"] > 1 else set()

    assert client.post("/dsls", json={"name": "first", "grammar": KV}, headers=_auth("alpha")).status_code == 201
    calls["n"] = 0
    monkeypatch.setattr(versions, "live_names", racing)
    _refused(client.post("/dsls", json={"name": "second", "grammar": KV}, headers=_auth("alpha")), 429)
    assert real("dsls", "alpha-corp") == {"first"}


# 13g: property-based: never a 5xx, never stored, /healthz answers --------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                     st.text(max_size=20))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


def _assert_refused_and_nothing_stored(client, tmp_path, response) -> None:
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()["error"]) >= {"type", "message"}
    assert _stored(tmp_path) == [] and client.get("/healthz").status_code == 200


@HOSTILE
@given(manifest=st.dictionaries(st.sampled_from(["name", "dsl", "tenants", "base_model", "rank", "prompt", "x"]),
                                _values, max_size=6))
def test_any_manifest_yaml_is_refused_or_served_never_a_5xx(replica, tmp_path, manifest):
    client = replica()
    files = {**_files(_folder(tmp_path)), "manifest.yaml": yaml.safe_dump(manifest).encode()}
    r = client.post("/adapters", content=_tar(files), headers=_auth("alpha"))
    if r.status_code != 201:
        _assert_refused_and_nothing_stored(client, tmp_path, r)
    assert client.get("/adapters", headers=_auth("alpha")).status_code == 200


@HOSTILE
@given(header=st.dictionaries(st.text(max_size=60), _values, max_size=4) | _values, tail=st.binary(max_size=64))
def test_any_safetensors_header_is_a_4xx_never_a_5xx(replica, tmp_path, header, tail):
    client = replica()
    files = {**_files(_folder(tmp_path)), "adapter_model.safetensors": _header(json.dumps(header).encode(), tail)}
    _assert_refused_and_nothing_stored(client, tmp_path, client.post("/adapters", content=_tar(files),
                                                                      headers=_auth("alpha")))


@HOSTILE
@given(members=st.lists(st.tuples(st.text(min_size=1, max_size=30), st.sampled_from(list(tarfile.REGULAR_TYPES)
                                                                                     + [tarfile.DIRTYPE,
                                                                                        tarfile.SYMTYPE]),
                                  st.binary(max_size=200)), max_size=20),
       gzipped=st.booleans())
def test_any_archive_is_a_4xx_never_a_5xx(replica, tmp_path, members, gzipped):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.linkname = kind, len(data) if kind in tarfile.REGULAR_TYPES else 0, "x"
            archive.addfile(info, io.BytesIO(data) if info.size else None)
    body = gzip.compress(buffer.getvalue()) if gzipped else buffer.getvalue()
    client = replica()
    _assert_refused_and_nothing_stored(client, tmp_path, client.post("/adapters", content=body,
                                                                      headers=_auth("alpha")))


@HOSTILE
@given(lines=st.lists(st.one_of(st.text(max_size=40), st.builds(json.dumps, _values),
                                st.builds(json.dumps, st.fixed_dictionaries({"text": _values, "code": _values},
                                                                             optional={"context": _values}))),
                      max_size=30))
def test_any_jsonl_examples_body_is_answered_without_a_5xx(kv, tmp_path, lines):
    r = kv.post("/dsls/kv/examples", content="\n".join(lines).encode(), headers=_auth("alpha"))
    assert r.status_code in (200, 422), r.text
    assert kv.get("/dsls", headers=_auth("alpha")).status_code == 200 and kv.get("/healthz").status_code == 200


# 13h-13j: metrics, parser cache, keys file ------------------------------------------------------------------

def test_a_tenants_adapter_named_like_a_shipped_one_does_not_land_in_its_metrics(replica, tmp_path):
    client = replica(metrics_on_api=True)
    archive = pack_adapter(_folder(tmp_path, "flow-general"))
    assert client.post("/adapters", content=archive, headers=_auth("alpha")).status_code == 201
    before = client.get("/metrics").text
    body = {"dsl": "flow", "text": "post to #sales", "adapter": "flow-general"}
    assert client.post("/generate", json=body, headers=_auth("alpha")).json()["adapter"] == "flow-general"
    text = client.get("/metrics").text
    for adapter, requests in (("flow-general", 0), ("custom", 1)):  # counters are process-wide: their deltas
        assert metric_value(text, "nl2dsl_requests_total", adapter=adapter) \
            - metric_value(before, "nl2dsl_requests_total", adapter=adapter) == requests


def test_one_tenants_uploads_cannot_push_anothers_parser_out_of_the_cache():
    cache = _ParserCache(total=64, per_owner=16)
    cache.put("alpha's", "alpha", object(), {})
    for i in range(140):
        cache.put(f"beta-{i}", "beta", object(), {})
    assert cache.get("alpha's") is not None and cache.get("beta-139") is not None and cache.get("beta-0") is None


@pytest.mark.parametrize("entry", ["just-a-string", ["a", "list"], {"sha256": "ab" * 32, "tenant": ["x"]},
                                   {"sha256": "ab" * 32, "admin": "yes"}, {"sha256": "zz", "tenant": "t"}])
def test_a_malformed_keys_file_entry_is_refused_when_read_never_a_500(tmp_path, entry):
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [entry]}))
    with pytest.raises(ValueError, match="keys.yaml"):
        KeyStore(path)
    path.write_text(yaml.safe_dump({"keys": [{"sha256": hash_key("good"), "tenant": "t"}]}))
    keys = KeyStore(path)
    path.write_text(yaml.safe_dump({"keys": [entry]}))  # a later bad edit keeps the last good keys
    keys._checked = -1e9
    assert keys.authenticate({"authorization": "Bearer good"}).tenant == "t"


def test_base_shapes_are_read_from_the_served_model():
    assert BaseShapes.of(resolve_model(None, Settings().cache_dir)) == BaseShapes(**SMOLLM2)


def test_the_upload_pool_answers_429_not_a_hang_when_a_tenant_floods_it():
    from service.errors import RateLimited
    from service.upload_pool import UploadPool

    async def flood() -> list[str]:
        pool = UploadPool(workers=1, per_owner=1, waiting=1)
        gate = threading.Event()
        jobs = [asyncio.ensure_future(pool.run("alpha", gate.wait, 10)) for _ in range(2)]
        await asyncio.sleep(0.05)
        outcomes = []
        try:
            await pool.run("alpha", lambda: None)
        except RateLimited:
            outcomes.append("429")
        gate.set()
        await asyncio.gather(*jobs)
        outcomes.append(str(await pool.run("beta", lambda: "beta ran")))
        pool.close()
        return outcomes

    assert asyncio.run(flood()) == ["429", "beta ran"]


def test_a_publish_unpacks_and_checks_the_archive_once_and_serves_the_checked_files(replica, tmp_path, monkeypatch):
    """One pass (issue 43): the folder a publish unpacked and checked is what this replica serves; its weights are
    read and checked once, not again when the version is installed."""
    from service.adapters import archive, registry

    checks, unpacks = [], []
    check_folder, unpack_confined = registry.check_folder, archive.unpack_confined
    monkeypatch.setattr(registry, "check_folder", lambda folder, **kw: checks.append(folder) or check_folder(
        folder, **kw))
    monkeypatch.setattr("service.adapters.uploads.unpack_confined",
                        lambda *a, **kw: unpacks.append(a[1]) or unpack_confined(*a, **kw))
    client = replica()
    checks.clear()  # the start-up scan of the shipped folder
    created = client.post("/adapters", content=pack_adapter(_folder(tmp_path)), headers=_auth("alpha"))
    assert created.status_code == 201, created.text
    assert len(checks) == 1 and len(unpacks) == 1
    (served,) = [a for a in client.app.state.adapters.all() if a.owner == "alpha-corp"]
    assert served.error is None and served.version == 1 and (served.path / "adapter_model.safetensors").is_file()
    assert not checks[0].exists()  # moved into the adapter cache, not copied
