"""Bring your own DSL on the real engine: real grammars as written generate code that parses, and two replicas
on one store serve what either publishes, across a restart and a rollback."""

from __future__ import annotations

import importlib.resources
from concurrent.futures import ThreadPoolExecutor

import httpx
import lark
import pytest

from service.adapter_uploads import pack_adapter
from service.local_server import local_server
from tests.helpers import eventually, make_random_adapter

GRAMMARS = {name: (importlib.resources.files("outlines") / "grammars" / f"{name}.lark").read_text()
            for name in ("json", "arithmetic")}
ASKS = {
    "json": ["a cat named Tom, 3 years old", "an empty list", "the numbers one to five", "a user with an email",
             "a shopping cart with two items", "true", "a point with x and y", "a list of three colours",
             "a book with title and author", "null", "a nested object with a list inside", "the weather today",
             "an order with an id and a total", "two people with their ages", "a flag set to false",
             "a product with price 9.99", "a map of countries to capitals", "a matrix of two rows",
             "a settings object with debug on", "a greeting message"],
    "arithmetic": ["one plus two", "three times four", "ten minus seven", "the sum of 1, 2 and 3",
                   "two times open paren three plus four close paren", "minus five", "8 divided by 2",
                   "the product of 6 and 7", "one hundred minus one", "2 plus 2 times 2", "nine", "negative two",
                   "seven plus eight minus nine", "12 divided by 4 times 3", "five squared as a product",
                   "1 plus 2 plus 3 plus 4", "twenty divided by five", "zero times anything, say 5",
                   "three minus minus three", "the average of 4 and 6 as an expression"],
}


@pytest.mark.parametrize("name", sorted(GRAMMARS))
def test_a_real_grammar_as_written_generates_code_lark_parses(server, name):
    grammar = GRAMMARS[name]
    with server.client() as client:
        uploaded = client.post("/dsls", json={"name": f"theirs-{name}", "grammar": grammar})
        assert uploaded.status_code == 201, uploaded.text

        def ask(i: int) -> dict:
            r = client.post("/generate", json={"dsl": f"theirs-{name}", "text": ASKS[name][i], "adapter": "base",
                                               "max_tokens": 96, "temperature": 0.7, "seed": i, "examples": 0})
            assert r.status_code == 200, r.text
            return r.json()

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(ask, range(20)))
    parser = lark.Lark(grammar)  # plain lark, the grammar as its authors wrote it
    finished = [r for r in results if r["finish_reason"] == "stop"]
    for result in finished:
        assert result["valid"] and parser.parse(result["code"]), result["code"]
    assert len(finished) >= 5, [r["finish_reason"] for r in results]


KV = 'start: pair ("\\n" pair)*\npair: KEY "=" VALUE\nKEY: /[a-z]+/\nVALUE: /[a-z0-9]+/\n'
KV2 = 'start: "set " KEY " to " VALUE\nKEY: /[a-z]+/\nVALUE: /[a-z0-9]+/\n'


def test_two_replicas_on_one_store_serve_what_either_publishes(server, tmp_path):
    adapter = pack_adapter(make_random_adapter(server.model_dir, tmp_path / "crm", seed=5, dsl="flow"))
    alpha = {"Authorization": "Bearer alpha-key"}
    ask = {"dsl": "kv", "text": "set the port to 80", "max_tokens": 24}
    with local_server(env=server.env, log=tmp_path / "second.log") as second_url, \
            httpx.Client(base_url=second_url, headers=alpha, timeout=300) as second:
        upload = {"name": "kv", "grammar": KV, "examples": [{"text": "listen on port 80", "code": "port=80"}]}
        assert second.post("/dsls", json=upload).status_code == 201
        assert second.post("/adapters", content=adapter).status_code == 201
    with server.client("alpha-key") as first:
        eventually(lambda: first.get("/dsls/kv").status_code == 200, "the first replica serves the DSL", timeout=60)
        eventually(lambda: "crm" in [a["name"] for a in first.get("/adapters").json()], "and the adapter", timeout=60)
        generated = first.post("/generate", json=ask).json()
        assert generated["finish_reason"] != "stop" or generated["valid"], generated
        flow = first.post("/generate", json={"dsl": "flow", "text": "post form answers to #sales",
                                             "adapter": "crm", "max_tokens": 16})
        assert flow.status_code == 200 and flow.json()["adapter"] == "crm"
        # The second replica restarts: everything is still there; a new version and a rollback reach both.
        with local_server(env=server.env, log=tmp_path / "restarted.log") as restarted_url, \
                httpx.Client(base_url=restarted_url, headers=alpha, timeout=300) as restarted:
            assert restarted.get("/dsls/kv").json()["grammar"] == KV
            assert "crm" in [a["name"] for a in restarted.get("/adapters").json()]
            assert first.post("/dsls", json={"name": "kv", "grammar": KV2}).json()["version"] == 2
            eventually(lambda: restarted.get("/dsls/kv").json()["grammar"] == KV2, "the new version everywhere",
                       timeout=60)
            assert first.post("/dsls/kv/rollback", json={"version": 1}).json()["version"] == 3
            eventually(lambda: restarted.get("/dsls/kv").json()["grammar"] == KV, "the rollback everywhere", timeout=60)
            for replica in (first, restarted):
                assert replica.post("/generate", json=ask).status_code == 200
        first.delete("/dsls/kv")
        first.delete("/adapters/crm")
