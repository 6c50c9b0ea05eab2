"""Runtime grammars (POST/DELETE /dsls): tenant scope, lark's position for bad grammars, size and time bounds."""

from __future__ import annotations

import pytest
import yaml

from service.security import hash_key

KV = 'start: pair ("\\n" pair)?\npair: KEY "=" VALUE\nKEY: /[a-z]{1,16}/\nVALUE: /[a-z0-9]{1,16}/\n'
UPLOAD = {"name": "kv", "grammar": KV, "description": "key=value lines",
          "examples": [{"text": "set the port to 80", "code": "port=80"}]}


@pytest.fixture()
def client(make_client, tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [{"sha256": hash_key("a"), "tenant": "contoso"},
                                             {"sha256": hash_key("b"), "tenant": "fabrikam"}]}))
    with make_client(auth="keys", api_keys_file=path, pieces=["port=", "80"]) as c:
        yield c


A, B = {"Authorization": "Bearer a"}, {"Authorization": "Bearer b"}


def test_an_uploaded_grammar_serves_its_tenant_only(client):
    created = client.post("/dsls", json=UPLOAD, headers=A)
    assert created.status_code == 201 and created.json()["origin"] == "upload"
    generated = client.post("/generate", json={"dsl": "kv", "text": "set the port to 80"}, headers=A).json()
    assert generated["valid"] is True and generated["code"] == "port=80"
    assert "KEY" in client.engine.calls[-1]["params"].grammar  # constrained to the upload
    assert client.post("/validate", json={"dsl": "kv", "code": "port 80"}, headers=A).json()["error"]["column"] == 5
    assert client.post("/generate", json={"dsl": "kv", "text": "x"}, headers=B).status_code == 404
    assert "kv" in [d["name"] for d in client.get("/dsls", headers=A).json()]
    assert "kv" not in [d["name"] for d in client.get("/dsls", headers=B).json()]
    assert client.delete("/dsls/kv", headers=B).status_code == 404
    assert client.delete("/dsls/kv", headers=A).status_code == 204
    assert client.post("/generate", json={"dsl": "kv", "text": "x"}, headers=A).status_code == 404


def test_an_invalid_grammar_is_400_with_lark_line_and_column(client):
    r = client.post("/dsls", json={**UPLOAD, "grammar": 'start: "a" b\nb: "c" )\n'}, headers=A)
    error = r.json()["error"]
    assert r.status_code == 400 and error["type"] == "grammar_invalid"
    assert error["detail"]["parser"] == "lark" and error["detail"]["line"] == 2 and error["detail"]["column"] == 8


def test_grammars_as_written_are_accepted_and_told_what_the_engine_bounds(client):
    written = {**UPLOAD, "grammar": 'start: WORD ("," WORD)*\nWORD: /[a-z]+/\n%ignore " "\n', "examples": [],
               "limits": {"repeat": 4}}
    accepted = client.post("/dsls", json=written, headers=A)
    assert accepted.status_code == 201, accepted.text
    body = accepted.json()
    assert body["grammar"] == written["grammar"] and body["limits"]["repeat"] == 4
    assert any("at most 4 times" in b for b in body["bounded"]) and any("%ignore" in b for b in body["bounded"])


def test_examples_that_do_not_parse_and_shipped_names_are_refused(client):
    bad_example = client.post("/dsls", json={**UPLOAD, "examples": [{"text": "x", "code": "nope"}]}, headers=A)
    assert bad_example.status_code == 422 and "examples" in bad_example.json()["error"]["message"]
    shipped = client.post("/dsls", json={**UPLOAD, "name": "flow"}, headers=A)
    assert shipped.status_code == 403


def test_huge_grammars_and_slow_compiles_are_refused_within_the_bound(make_client):
    with make_client(max_grammar_chars=200) as client:
        big = client.post("/dsls", json={**UPLOAD, "grammar": KV + "// padding\n" * 30})
    assert big.status_code == 422 and "limit is 200" in big.json()["error"]["message"]
    with make_client(grammar_compile_timeout_s=0.0001) as client:
        slow = client.post("/dsls", json=UPLOAD)
    assert slow.status_code == 400 and slow.json()["error"]["detail"]["limit"] == "compile_time"
    with make_client() as client:  # the killed compile worker is replaced
        assert client.post("/dsls", json=UPLOAD).status_code == 201


def test_an_upload_declares_how_its_programs_compare_and_a_wrong_declaration_stores_nothing(client):
    compare = {"unordered": ["start"], "fold_case": True}
    created = client.post("/dsls", json={**UPLOAD, "compare": compare}, headers=A)
    assert created.status_code == 201 and created.json()["compare"] == {**compare, "semantic": None}
    assert client.get("/dsls/kv", headers=A).json()["compare"]["unordered"] == ["start"]
    for wrong in ({"unordered": ["nope"]}, {"unordered": ["x"] * 65}, {"semantic": "python"},
                  {"unordered": "start"}, {"extra": 1}):
        refused = client.post("/dsls", json={**UPLOAD, "name": "kv2", "compare": wrong}, headers=A)
        assert refused.status_code == 422 and refused.json()["error"]["type"] == "invalid_request", wrong
    assert "kv2" not in [d["name"] for d in client.get("/dsls", headers=A).json()]
