"""Bring your own DSL: real grammars as written, their examples used at once, versions in a store replicas share,
adapters published as archives. Around a fake engine; the grammar sandbox and the store are real."""

from __future__ import annotations

import importlib.resources
import io
import json
import tarfile

import llguidance
import pytest

from service.adapters import pack_adapter
from service.config import Settings
from service.model import base_fingerprint, resolve_model
from tests.helpers import eventually, write_fake_adapter

KV = 'start: pair ("\\n" pair)*\npair: KEY "=" VALUE\nKEY: /[a-z]+/\nVALUE: /[a-z0-9]+/\n'


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _prompt(client) -> str:
    """The text of the last prompt the engine was sent."""
    return client.app.state.serving.tokenizer.decode(client.engine.calls[-1]["prompt_token_ids"])


def test_an_uploads_examples_reach_the_prompt_at_once_and_more_can_be_added(replica):
    client = replica()
    upload = {"name": "kv", "grammar": KV, "examples": [{"text": "listen on port eighty", "code": "port=80"}]}
    assert client.post("/dsls", json=upload, headers=_auth("alpha")).status_code == 201
    client.post("/generate", json={"dsl": "kv", "text": "listen on port eighty please", "examples": 3},
                headers=_auth("alpha"))
    assert "port=80" in _prompt(client)
    jsonl = "\n".join([json.dumps({"text": "use the debug log level", "code": "level=debug"}),
                       json.dumps({"text": "broken", "code": "level = debug"}), "not json"])
    added = client.post("/dsls/kv/examples", content=jsonl, headers=_auth("alpha"))
    body = added.json()
    assert added.status_code == 200 and body["added"] == 1 and body["dsl"]["example_count"] == 2
    assert [r["line"] for r in body["rejected"]] == [2, 3] and body["rejected"][0]["code_column"] == 6
    client.post("/generate", json={"dsl": "kv", "text": "set the debug log level", "examples": 1},
                headers=_auth("alpha"))
    assert "level=debug" in _prompt(client)  # retrieved without a restart


def test_versions_rollback_and_deletion_stay_within_the_owner(replica):
    client = replica()
    for grammar in (KV, 'start: "x=" /[0-9]{1,3}/\n'):
        assert client.post("/dsls", json={"name": "kv", "grammar": grammar}, headers=_auth("alpha")).status_code == 201
    versions = client.get("/dsls/kv/versions", headers=_auth("alpha")).json()
    assert [v["version"] for v in versions] == [1, 2]
    rolled = client.post("/dsls/kv/rollback", json={"version": 1}, headers=_auth("alpha")).json()
    assert rolled["version"] == 3 and rolled["grammar"] == KV
    for method, path, body in (("GET", "/dsls/kv/versions", None), ("POST", "/dsls/kv/rollback", {"version": 1}),
                               ("DELETE", "/dsls/kv", None), ("GET", "/dsls/kv", None)):
        r = client.request(method, path, json=body, headers=_auth("beta"))
        assert r.status_code == 404, (method, path, r.text)  # beta cannot tell alpha's DSL from none
    assert client.delete("/dsls/kv", headers=_auth("alpha")).status_code == 204
    assert client.get("/dsls/kv", headers=_auth("alpha")).status_code == 404
    assert client.get("/dsls/kv/versions", headers=_auth("alpha")).json()[-1]["deleted"] is True
    back = client.post("/dsls/kv/rollback", json={"version": 2}, headers=_auth("alpha"))
    assert back.status_code == 200 and back.json()["version"] == 5  # a deleted DSL can come back


def test_replicas_on_one_store_serve_what_either_publishes(replica):
    first, second = replica(), replica()
    assert first.post("/dsls", json={"name": "kv", "grammar": KV}, headers=_auth("alpha")).status_code == 201
    eventually(lambda: second.get("/dsls/kv", headers=_auth("alpha")).status_code == 200,
                "the other replica serves it")
    assert second.post("/generate", json={"dsl": "kv", "text": "port"}, headers=_auth("alpha")).json()["valid"]
    restarted = replica()  # a new process on the same store: nothing was lost
    eventually(lambda: restarted.get("/dsls/kv", headers=_auth("alpha")).status_code == 200, "a restart serves it")
    assert second.delete("/dsls/kv", headers=_auth("alpha")).status_code == 204
    eventually(lambda: first.get("/dsls/kv", headers=_auth("alpha")).status_code == 404, "the deletion reaches all")


def _crm_archive(tmp_path) -> bytes:
    """An adapter "crm" for flow on the embedded base, packed as `POST /adapters` takes it."""
    built = tmp_path / "built"
    built.mkdir()
    fingerprint = base_fingerprint(resolve_model(None, Settings().cache_dir))
    return pack_adapter(write_fake_adapter(built, "crm", fingerprint=fingerprint, dsl="flow", tenants=("*",)))


def test_an_adapter_published_as_an_archive_serves_its_tenant_on_every_replica(replica, tmp_path):
    good = _crm_archive(tmp_path)
    first, second = replica(), replica()
    published = first.post("/adapters", content=good, headers=_auth("alpha"))
    assert published.status_code == 201, published.text
    assert published.json()["tenants"] == ["alpha-corp"] and published.json()["version"] == 1  # its tenant only
    eventually(lambda: "crm" in [a["name"] for a in second.get("/adapters", headers=_auth("alpha")).json()],
                "the other replica serves the adapter")
    body = {"dsl": "flow", "text": "post form answers to #sales", "adapter": "crm"}
    assert second.post("/generate", json=body, headers=_auth("alpha")).json()["adapter"] == "crm"
    assert second.engine.calls[-1]["adapter"].name == "flow:crm"  # as clients name it in `model`
    assert second.post("/generate", json=body, headers=_auth("beta")).status_code == 404
    assert "crm" not in [a["name"] for a in second.get("/adapters", headers=_auth("beta")).json()]
    assert first.post("/adapters", content=good, headers=_auth("beta")).status_code == 201  # beta's own "crm"
    assert [v["version"] for v in first.get("/adapters/crm/versions", headers=_auth("alpha")).json()] == [1]


def test_an_unpacked_copy_left_incomplete_by_an_earlier_run_is_replaced_not_a_500(replica, tmp_path):
    # Each replica unpacks a published version into its cache, by content; the cache outlives runs. A copy an
    # earlier try left without its manifest once failed every later install of that version ("Directory not empty").
    cache = tmp_path / "cache"  # the replicas'
    good = _crm_archive(tmp_path)
    first = replica()
    assert first.post("/adapters", content=good, headers=_auth("alpha")).status_code == 201
    [copy] = (cache / "published-adapters").iterdir()
    (copy / "manifest.yaml").unlink()  # as a try cut short leaves it

    restarted = replica()  # a new process on the same store and cache
    eventually(lambda: "crm" in [a["name"] for a in restarted.get("/adapters", headers=_auth("alpha")).json()],
               "the restarted replica serves the adapter")
    body = {"dsl": "flow", "text": "post form answers to #sales", "adapter": "crm"}
    assert restarted.post("/generate", json=body, headers=_auth("alpha")).json()["adapter"] == "crm"
    assert [p.name for p in (cache / "published-adapters").iterdir()] == [copy.name]  # no partial folder left
    assert (copy / "manifest.yaml").exists()


def test_adapter_archives_that_cannot_be_served_are_refused_with_the_reason(replica, tmp_path):
    built = tmp_path / "built"
    built.mkdir()
    other_base = pack_adapter(write_fake_adapter(built, "other", fingerprint="feedfacefeedface"))
    escaping = io.BytesIO()
    with tarfile.open(fileobj=escaping, mode="w:gz") as archive:
        info = tarfile.TarInfo("../../outside.txt")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"hi"))
    client = replica(max_adapter_bytes=100_000)
    refused = client.post("/adapters", content=other_base, headers=_auth("alpha"))
    assert refused.status_code == 400 and "feedfacefeedface" in refused.json()["error"]["message"]
    assert client.post("/adapters", content=b"not an archive", headers=_auth("alpha")).status_code == 400
    assert client.post("/adapters", content=escaping.getvalue(), headers=_auth("alpha")).status_code == 400
    assert not (tmp_path.parent / "outside.txt").exists()
    assert client.post("/adapters", content=b"x" * 100_001, headers=_auth("alpha")).status_code == 413


def _third_party_grammars() -> list[tuple[str, str]]:
    found = []
    for package in ("lark", "outlines"):
        for path in sorted((importlib.resources.files(package) / "grammars").iterdir()):
            if path.name.endswith(".lark"):
                found.append((f"{package}/{path.name}", path.read_text()))
    return found


@pytest.mark.parametrize("name, grammar", _third_party_grammars(), ids=[n for n, _ in _third_party_grammars()])
def test_real_grammars_shipped_in_lark_and_outlines_are_taken_as_written(replica, name, grammar):
    """Accepted if the engine can represent the grammar as written (llguidance reads it); otherwise refused
    naming the construct, line and column."""
    is_error, _ = llguidance.LLMatcher.validate_grammar_with_warnings(llguidance.grammar_from("lark", grammar))
    r = replica().post("/dsls", json={"name": "theirs", "grammar": grammar}, headers=_auth("alpha"))
    if not is_error:
        assert r.status_code == 201, r.text
        assert r.json()["grammar"] == grammar and r.json()["bounded"]
    else:
        detail = r.json()["error"]["detail"]
        assert r.status_code == 400 and detail["line"] and detail.get("column"), r.text


def test_code_that_parses_to_a_single_token_is_valid_everywhere(replica):
    """``?start: value`` inlines a lone string down to one token: still valid, with a tree, checked by policy."""
    client = replica(pieces=('"abc"',))
    upload = {"name": "json", "grammar": dict(_third_party_grammars())["outlines/json.lark"]}
    assert client.post("/dsls", json=upload, headers=_auth("alpha")).status_code == 201
    validated = client.post("/validate", json={"dsl": "json", "code": '"abc"'}, headers=_auth("alpha")).json()
    assert validated["valid"] and validated["tree"].startswith("start")
    generated = client.post("/generate", json={"dsl": "json", "text": "yes"}, headers=_auth("alpha"))
    assert generated.status_code == 200 and generated.json()["valid"]


def test_a_name_no_dsl_or_adapter_can_have_is_a_422_not_a_store_error(replica):
    """Found by the schema fuzzer: a long unicode name in the path became a file name too long for the store."""
    client = replica()
    name = "\U0001d413\U0001d421\U0001d41e" * 30
    for method, path, body in (("POST", f"/dsls/{name}/rollback", {"version": 1}), ("GET", f"/dsls/{name}/versions",
                                                                                      None),
                               ("DELETE", f"/dsls/{name}", None), ("POST", f"/adapters/{name}/rollback",
                                                                   {"version": 1}),
                               ("GET", f"/adapters/{'x' * 300}/versions", None)):
        r = client.request(method, path, json=body, headers=_auth("alpha"))
        assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request", (path, r.text)
