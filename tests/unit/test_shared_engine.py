"""Tenants share an engine, not its state (issue 42; docs/SECURITY.md, 14-21): the attacks that need no engine.

Each test is named for what it stops; the attacks that need the real engine (a poisoned adapter, the prefix
cache's timing) are in tests/integration/test_shared_engine.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import os
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import AsyncMock, MagicMock

import numpy as np
import pytest
import safetensors.numpy
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from service.adapters import archive
from service.engine import AdapterRef, Engine
from service.engine.plugins import guard as lora_guard
from service.engine.plugins.guard import MAX_WEIGHT
from service.errors import AdapterUnavailable, EngineUnavailable
from tests.unit.test_hostile_uploads import _auth, _files, _folder, _refused, _stored, _tar

_POISONS = [float("nan"), float("inf"), float("-inf"), 3e38, -2 * MAX_WEIGHT]


# 14: one tenant's adapter poisons everyone's output -------------------------------------------------------

@pytest.mark.parametrize("poison", _POISONS, ids=["nan", "inf", "-inf", "3e38", "past the bound"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, "bfloat16"])
def test_an_adapter_with_non_finite_or_huge_weights_is_refused_at_publish_and_nothing_is_stored(
        replica, tmp_path, poison, dtype):
    folder = _folder(tmp_path)
    tensors = safetensors.numpy.load(folder.joinpath("adapter_model.safetensors").read_bytes())
    key = sorted(tensors)[-1]
    tensors[key][3, 1] = poison
    if dtype == "bfloat16":  # numpy has no bfloat16: written through torch
        from safetensors.torch import save
        data = save({k: torch.from_numpy(v).bfloat16() for k, v in tensors.items()})
    else:
        data = safetensors.numpy.save({k: v.astype(dtype) for k, v in tensors.items()})
    folder.joinpath("adapter_model.safetensors").write_bytes(data)
    client = replica()
    error = _refused(client.post("/adapters", content=_tar(_files(folder)), headers=_auth("alpha")))
    assert key in error["message"] and "NaN, infinite values or values beyond" in error["message"]
    assert _stored(tmp_path) == []


def test_weights_trained_as_usual_pass_the_value_check(replica, tmp_path):
    assert replica().post("/adapters", content=_tar(_files(_folder(tmp_path))),
                          headers=_auth("alpha")).status_code == 201


@pytest.mark.parametrize("poison", _POISONS, ids=["nan", "inf", "-inf", "3e38", "past the bound"])
def test_the_engine_guard_refuses_an_adapter_whose_weights_are_non_finite_or_huge(poison):
    """The engine's own backstop: an adapter that reached it anyway is refused by name before any slot."""
    good = SimpleNamespace(lora_a=torch.randn(8, 576) * 0.05, lora_b=torch.randn(576, 8) * 0.05)
    bad = SimpleNamespace(lora_a=torch.randn(8, 576) * 0.05, lora_b=torch.randn(576, 8).bfloat16())
    bad.lora_b[5, 2] = poison
    assert lora_guard.weights_out_of_range(SimpleNamespace(loras={"layers.0.q_proj": good})) is None
    problem = lora_guard.weights_out_of_range(SimpleNamespace(loras={"layers.0.q_proj": good,
                                                                     "layers.1.o_proj": bad}))
    assert problem and problem.startswith("layers.1.o_proj: lora_b")


# 16: 365 bytes freeze the whole API -----------------------------------------------------------------------

def _pax_bomb(digits: int) -> bytes:
    """A .tar.gz whose first member is a PAX header of ``digits`` digits: Python 3.11.7's tarfile parses it in
    time quadratic in its length (200,000 digits: 84 s with the interpreter held)."""
    payload = b"0" * digits
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, len(payload)
    body = info.tobuf(format=tarfile.USTAR_FORMAT) + payload + bytes(-len(payload) % 512) + bytes(1024)
    return gzip.compress(body, 9)


def test_a_365_byte_pax_bomb_is_a_400_without_tarfile_and_the_api_stays_up(replica, tmp_path, monkeypatch):
    bomb = _pax_bomb(200_000)
    assert len(bomb) < 400
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: pytest.fail("tarfile must not read what tenants send"))
    client = replica()
    started = time.process_time()
    error = _refused(client.post("/adapters", content=bomb, headers=_auth("alpha")))
    assert "PAX or long-name header over 65536 bytes" in error["message"]
    assert time.process_time() - started < 30  # a bound, not a timing: 84 s of CPU before
    assert client.get("/healthz").status_code == 200 and _stored(tmp_path) == []


def test_an_archive_is_unpacked_in_a_child_that_is_stopped_at_its_time_bound(replica, tmp_path):
    """Whatever a parse under the archive does, it runs in a process of its own, killed past
    NL2DSL_UPLOAD_UNPACK_TIMEOUT_S (here too short for any archive): a 400, nothing stored, the API up."""
    client = replica(upload_unpack_timeout_s=0.000001)
    archive = _tar({**_files(_folder(tmp_path)), "README": os.urandom(16 << 20)})  # tens of ms to read past
    error = _refused(client.post("/adapters", content=archive, headers=_auth("alpha")))
    assert "took longer than 1e-06 s to unpack" in error["message"]
    assert client.get("/healthz").status_code == 200 and _stored(tmp_path) == []


_names = st.text(st.characters(codec="utf-8", exclude_characters="\0/"), min_size=1, max_size=120)


@settings(max_examples=60, deadline=None)
@given(names=st.lists(_names, min_size=1, max_size=4, unique=True), nested=st.booleans(),
       fmt=st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
       sizes=st.lists(st.integers(0, 3000), min_size=5, max_size=5))
def test_archives_tar_writes_unpack_as_tar_reads_them(tmp_path_factory, names, nested, fmt, sizes):
    """Property: the reader that replaced tarfile's gives the adapter files tarfile would, for archives in each
    format tarfile writes (long and non-ASCII names: PAX records and GNU long names), beside other files."""
    members = {**{f"extra-{name}": bytes([len(name) % 251]) * size for name, size in zip(names, sizes, strict=False)},
               "manifest.yaml": b"m" * sizes[-1], "adapter_model.safetensors": b"w" * sizes[0]}
    buffer = io.BytesIO()
    try:
        with tarfile.open(fileobj=buffer, mode="w:gz", format=fmt) as written:
            if nested:
                folder = tarfile.TarInfo("adapter-" + names[0][:80])
                folder.type = tarfile.DIRTYPE
                written.addfile(folder)
            for name, data in members.items():
                info = tarfile.TarInfo(("adapter-" + names[0][:80] + "/" if nested else "") + name)
                info.size = len(data)
                written.addfile(info, io.BytesIO(data))
    except ValueError:  # a name this format cannot hold (too long for USTAR, not ASCII): tar's own refusal
        return
    target = tmp_path_factory.mktemp("unpacked")
    archive.unpack(buffer.getvalue(), target, max_bytes=1 << 24)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == {
        "manifest.yaml": members["manifest.yaml"], "adapter_model.safetensors": members["adapter_model.safetensors"]}


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3000), flips=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 255)),
                                                     max_size=8))
def test_any_bytes_unpack_or_are_refused_never_anything_else(tmp_path_factory, data, flips):
    """Property: random bytes, and real archives with bytes changed anywhere in their tar stream, are unpacked or
    refused with ArchiveRefused: never another error, never a write outside the folder."""
    tar_stream = bytearray(gzip.decompress(_tar({"manifest.yaml": b"name: x\n", "README": data})))
    for at, value in flips:
        tar_stream[at % len(tar_stream)] = value
    for body in (data, gzip.compress(bytes(tar_stream))):
        target: Path = tmp_path_factory.mktemp("unpacked")
        with contextlib.suppress(archive.ArchiveRefused):
            archive.unpack(body, target, max_bytes=1 << 20)
        assert {p.name for p in target.iterdir()} <= archive.ADAPTER_FILES


# 20, 21: smaller doors, and a key written down ---------------------------------------------------------

@pytest.mark.parametrize("text, reason", [
    ("rank: " + "9" * 5000, "more than 40 digits"), ("rank: !!float x", "not what its type says"),
    ("trained: !!timestamp 2024-02-30", "not what its type says"), ("trained: 2024-02-30", "not what its type says"),
    ("rank: !!python/object:os.system x", "not valid YAML")])
def test_a_manifest_scalar_that_is_not_what_its_type_says_is_a_400(replica, tmp_path, text, reason):
    folder = _folder(tmp_path)
    manifest = folder / "manifest.yaml"
    manifest.write_text(manifest.read_text() + text + "\n")
    error = _refused(replica().post("/adapters", content=_tar(_files(folder)), headers=_auth("alpha")))
    assert reason in error["message"] and _stored(tmp_path) == []


@pytest.mark.parametrize("name", ["base", "BASE"])
def test_an_adapter_named_base_is_refused_since_no_request_could_reach_it(replica, tmp_path, name):
    error = _refused(replica().post("/adapters", content=_tar(_files(_folder(tmp_path, name=name))),
                                    headers=_auth("alpha")))
    assert "reserved" in error["message"] and _stored(tmp_path) == []


def test_two_key_headers_that_disagree_are_a_401_and_two_that_agree_are_one_key(replica):
    client = replica()
    both = client.get("/adapters", headers={**_auth("alpha"), "X-API-Key": "beta"})
    assert both.status_code == 401 and "two different API keys" in both.json()["error"]["message"]
    assert client.get("/adapters", headers={**_auth("alpha"), "X-API-Key": "alpha"}).status_code == 200


@pytest.mark.parametrize("argv", [["--api-key", "s3cret-key"], ["--api-key=s3cret-key"]])
def test_a_reports_command_line_never_carries_the_api_key(monkeypatch, argv):
    from service import cli

    monkeypatch.setattr("sys.argv", ["nl2dsl", "onboard", "--grammar", "g.lark", *argv, "--steps", "2"])
    command = cli._reproducible("onboard")
    assert "s3cret-key" not in command and "$NL2DSL_API_KEY" in command and command.endswith("--steps 2")


# 14, 15: what the engine is handed -------------------------------------------------------------------------

def _engine_with(outputs: list) -> tuple[Engine, MagicMock]:
    llm = MagicMock()
    llm.errored = False
    llm.abort, llm.add_lora = AsyncMock(), AsyncMock()

    async def generate(prompt, sampling, request_id, lora_request=None):
        llm.prompt, llm.sampling = prompt, sampling
        for out in outputs:
            yield out

    llm.generate = generate
    return Engine(llm, model="m"), llm


def _out(logprob: float, *, finished: bool = False) -> SimpleNamespace:
    completion = SimpleNamespace(text="x", token_ids=[5], finish_reason="stop" if finished else None,
                                 logprobs=[{5: SimpleNamespace(logprob=logprob)}])
    return SimpleNamespace(outputs=[completion], finished=finished, metrics=None, num_cached_tokens=48)


async def _run(engine: Engine, **kwargs) -> list:
    return [delta async for delta in engine.generate([1, 2, 3], request_id="r", **kwargs)]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("adapter", [AdapterRef("flow:evil", 7, "/x"), None], ids=["adapter", "base model"])
def test_a_request_whose_logits_turn_non_finite_is_aborted_with_a_clear_error(bad, adapter):
    engine, llm = _engine_with([_out(-0.5), _out(bad), _out(-0.1, finished=True)])
    with pytest.raises(AdapterUnavailable if adapter else EngineUnavailable) as stopped:
        asyncio.run(_run(engine, adapter=adapter))
    assert "non-finite" in stopped.value.message
    llm.abort.assert_awaited_once_with("r")
    assert llm.sampling.logprobs == 0  # the sampled token's raw log-probability is what is checked


def test_each_tenant_reads_and_fills_a_prefix_cache_of_its_own():
    engine, llm = _engine_with([_out(-0.5, finished=True)])
    salts = []
    for tenant in ("alpha-corp", "beta-corp", None, "alpha-corp"):
        deltas = asyncio.run(_run(engine, tenant=tenant))
        salts.append(llm.prompt["cache_salt"])
    assert salts[0] == salts[3] and len({*salts}) == 3 and deltas[-1].cached_tokens == 48


def test_the_request_path_hands_the_engine_the_tenant_its_key_resolved(replica):
    client = replica()
    for key, tenant in (("alpha", "alpha-corp"), ("beta", "beta-corp")):
        r = client.post("/generate", json={"dsl": "flow", "text": "post form answers to #sales"}, headers=_auth(key))
        assert r.status_code == 200, r.text
        assert client.engine.calls[-1]["tenant"] == tenant


# 19: stalled uploads hold memory -------------------------------------------------------------------------

async def _post(app, path: str, key: str, chunks: list[bytes], *, length: int, stall: bool) -> dict:
    """POST ``chunks`` to the ASGI ``app`` declaring ``length`` bytes; ``stall``: then send nothing more."""
    sent, answer = iter(chunks), {}

    async def receive() -> dict:
        chunk = next(sent, None)
        if chunk is None:
            if stall:
                await asyncio.sleep(3600)
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] = answer.get("body", b"") + message.get("body", b"")

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"authorization", f"Bearer {key}".encode()), (b"content-length", str(length).encode()),
                         (b"host", b"testserver")], "client": ("127.0.0.1", 1), "server": ("testserver", 80),
             "scheme": "http", "http_version": "1.1", "root_path": ""}
    await app(scope, receive, send)
    return {"status": answer.get("status"), **json.loads(answer.get("body") or b"{}")}


def test_a_stalled_upload_is_a_408_at_its_time_bound_and_holds_nothing_after(replica, tmp_path):
    client = replica(upload_body_timeout_s=0.5)
    answer = asyncio.run(_post(client.app, "/adapters", "alpha", [b"x" * 65536] * 4, length=59 << 20, stall=True))
    assert answer["status"] == 408 and answer["error"]["type"] == "body_timeout"
    bodies = client.app.state.upload_bodies
    assert bodies.in_flight == 0 and not list((tmp_path / "cache" / "upload-bodies").iterdir())
    assert _stored(tmp_path) == []


@pytest.mark.parametrize("path", ["/onboarding", "/dsls"])
def test_a_stalled_json_body_is_a_408_too(replica, path):
    client = replica(upload_body_timeout_s=0.5)
    answer = asyncio.run(_post(client.app, path, "alpha", [b'{"name": "x", "grammar": "'], length=900_000,
                               stall=True))
    assert answer["status"] == 408 and answer["error"]["type"] == "body_timeout"


def test_stalled_uploads_are_bounded_per_tenant_and_in_bytes_before_a_byte_is_read(replica, tmp_path):
    client = replica(upload_body_timeout_s=30, upload_bodies_per_tenant=2, upload_bytes_in_flight=150 << 20)
    bodies = client.app.state.upload_bodies
    archive = _tar(_files(_folder(tmp_path)))

    async def scenario() -> list[dict]:
        stalled = [asyncio.create_task(_post(client.app, "/adapters", "alpha", [b"x" * 1024], length=59 << 20,
                                             stall=True)) for _ in range(2)]
        await asyncio.sleep(0.2)
        assert bodies.in_flight == 2 * (59 << 20)
        third = await _post(client.app, "/adapters", "alpha", [b"x"], length=1000, stall=True)  # per tenant
        too_many_bytes = await _post(client.app, "/adapters", "beta", [b"x"], length=59 << 20, stall=True)
        small = await _post(client.app, "/adapters", "beta", [archive], length=len(archive), stall=False)
        for task in stalled:
            task.cancel()
        await asyncio.gather(*stalled, return_exceptions=True)
        return [third, too_many_bytes, small]

    third, too_many_bytes, small = asyncio.run(scenario())
    assert third["status"] == 429 and third["error"]["detail"]["limit"] == "uploads_receiving"
    assert too_many_bytes["status"] == 429 and too_many_bytes["error"]["detail"]["limit"] == "upload_bytes_in_flight"
    assert small["status"] == 201, small
    assert bodies.in_flight == 0


# 17: an onboarding run's dataset check parses without a bound --------------------------------------------

def test_the_dataset_check_bounds_each_parse_as_validate_does(tmp_path):
    """An ambiguous grammar compiles at once and Earley-parses 'a' * n in about n^3.7: each pair's parse now
    stops at the bound /validate has (CPU seconds) and the pair is rejected, saying why."""
    from service.grammars import compile_grammar
    from service.onboarding.dataset import build_dataset

    grammar = compile_grammar("amb", 'start: e\ne: "a" | e e\n', origin="upload")
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"text": f"{n} a", "code": "a" * n} for n in range(1, 21)] + [{"text": "slow", "code": "a" * 400}]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    started = time.process_time()
    dataset = build_dataset(grammar, pairs, min_pairs=5, parse_timeout_s=0.5)
    assert time.process_time() - started < 30  # unbounded, the 400-character parse alone runs for hours
    assert [r.line for r in dataset.rejects] == [21]
    assert "could not be parsed within 0.5 s" in dataset.rejects[0].message
    assert len(dataset.train) + len(dataset.heldout) == 20


def test_a_large_file_is_checked_by_one_process_per_core_with_the_same_verdicts_and_bound(tmp_path, monkeypatch):
    """Past PARALLEL_FROM pairs the codes are parsed in worker processes: the same rejects, in line order, with
    lark's positions, and a parse past the CPU bound is stopped there too."""
    from service.grammars import compile_grammar
    from service.onboarding import dataset as check

    grammar = compile_grammar("amb", 'start: e\ne: "a" | e e\n', origin="upload")
    rows = [{"text": f"{n} a", "code": "a" * n if n % 7 else "a b"} for n in range(1, 21)]
    rows.insert(10, {"text": "slow", "code": "a" * 400})
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    serial = check.build_dataset(grammar, pairs, min_pairs=5, parse_timeout_s=0.5)
    monkeypatch.setattr(check, "PARALLEL_FROM", 1)
    parallel = check.build_dataset(grammar, pairs, min_pairs=5, parse_timeout_s=0.5)
    assert parallel == serial
    assert [r.line for r in parallel.rejects] == [7, 11, 15]
    assert "could not be parsed within 0.5 s" in parallel.rejects[1].message
    assert parallel.rejects[0].code_line == 1 and parallel.rejects[0].code_column is not None


def test_a_bound_that_lands_in_a_finalizer_still_stops_the_block_and_reports_nothing(monkeypatch):
    """The CPU bound is a signal: when it lands in a finalizer Python cannot raise it there and reports it as
    'unraisable' (pytest then fails whatever test runs, as CI once did). Such a report is dropped, the timer
    fires again, and the block still stops."""
    import sys

    from service.onboarding.dataset import _cpu_bound, _TooLong

    reports: list = []
    monkeypatch.setattr(sys, "unraisablehook", reports.append)

    def spin(seconds: float) -> None:
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    class Finalized:
        def __del__(self) -> None:
            spin(0.004)

    started = time.process_time()
    for _ in range(5):  # each time, the first signal lands in __del__ more often than not
        with pytest.raises(_TooLong), _cpu_bound(0.05):
            while time.process_time() - started < 30:
                Finalized()  # dropped at once: four fifths of the block's CPU are spent in __del__
                spin(0.001)
    assert time.process_time() - started < 30
    assert reports == [] and sys.unraisablehook == reports.append


def test_an_adapters_lora_request_is_made_once_and_follows_its_files_when_they_move():
    """Engine.load makes the LoRARequest when the engine first loads the adapter (add_lora once) and hands the
    same one to later requests; the same weights in another folder (an upload moved into the cache) or asked
    under another client name get a request naming that, without loading the weights again."""
    engine, llm = _engine_with([])
    first = asyncio.run(engine.load(AdapterRef("flow:crm", 7, "/staging/adapter")))
    again = asyncio.run(engine.load(AdapterRef("flow:crm", 7, "/staging/adapter")))
    assert again is first and llm.add_lora.await_count == 1
    moved = asyncio.run(engine.load(AdapterRef("flow:crm", 7, "/cache/ab12")))
    assert moved.lora_path == "/cache/ab12" and moved.lora_int_id == 7 and llm.add_lora.await_count == 1
    assert asyncio.run(engine.load(AdapterRef("flow:crm", 7, "/cache/ab12"))) is moved
    other = asyncio.run(engine.load(AdapterRef("sql:crm", 7, "/cache/ab12")))
    assert other.lora_name.startswith("sql:crm#") and llm.add_lora.await_count == 1


@settings(max_examples=15, deadline=None)
@given(lines=st.lists(st.one_of(
    st.text(max_size=60),  # not JSON, or JSON that is not a pair
    st.builds(lambda t, c: json.dumps({"text": t, "code": c}), st.text(max_size=30),
              st.one_of(st.text(alphabet="ab \n", max_size=40), st.just("a" * 300))),
), min_size=1, max_size=30))
def test_hostile_pairs_get_the_same_verdicts_from_the_workers_as_from_one_process(lines, tmp_path_factory):
    """Whatever a team's pairs file holds (junk lines, empty or slow codes), the forked check gives what one
    process gives: the same dataset, or the same RequestInvalid (a 400), never another error; it writes nothing."""
    from service.errors import RequestInvalid
    from service.grammars import compile_grammar
    from service.onboarding import dataset as check

    folder = tmp_path_factory.mktemp("pairs")
    pairs = folder / "pairs.jsonl"
    pairs.write_text("\n".join(lines))
    grammar = compile_grammar("amb", 'start: e\ne: "a" | e e\n', origin="upload")

    def verdict():
        try:
            return check.build_dataset(grammar, pairs, min_pairs=2, parse_timeout_s=0.2)
        except RequestInvalid as exc:
            return ("400", exc.message)

    serial = verdict()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(check, "PARALLEL_FROM", 1)
        assert verdict() == serial
    assert sorted(p.name for p in folder.iterdir()) == ["pairs.jsonl"]
