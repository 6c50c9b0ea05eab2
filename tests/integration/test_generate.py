"""POST /generate on the real engine: constrained output parses, /validate agrees with lark, bad input is refused."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from service.config import Settings
from service.grammars import GrammarRegistry
from tests.conftest import ADMIN_KEY

GRAMMARS = GrammarRegistry(Settings().grammars_dir).load()

REQUESTS = {
    "flow": [
        {"text": "when a form is submitted, post the answers to #sales"},
        {"text": "every friday at 17:00 email boss@example.com the weekly report"},
        {"text": "when a high priority ticket is created in Support, text the on-call phone and log it"},
    ],
    "sql": [
        {"text": "how many customers per country", "context": "customers(id, name, country)"},
        {"text": "the 3 cheapest products in the books category", "context": "products(id, name, category, price)"},
        {"text": "average order total per status", "context": "orders(id, customer_id, total, status)"},
    ],
}


@pytest.mark.parametrize("dsl", sorted(REQUESTS))
def test_every_dsl_generates_code_that_parses(client, dsl):
    assert set(REQUESTS) == set(GRAMMARS.names()), "every shipped DSL is exercised here"
    finished = 0

    def generate(request: dict) -> httpx.Response:
        return client.post("/generate", json={"dsl": dsl, "adapter": "base", "max_tokens": 160, **request})

    with ThreadPoolExecutor(len(REQUESTS[dsl])) as pool:  # batched together, as concurrent users are
        responses = list(pool.map(generate, REQUESTS[dsl]))
    for r in responses:
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["dsl"] == dsl and body["adapter"] == "base"
        lark_says = GRAMMARS.get(dsl).parse(body["code"]).valid
        assert body["valid"] is lark_says
        if body["finish_reason"] == "stop":
            finished += 1
            assert lark_says, f"constrained output that finished must parse:\n{body['code']}"
        else:
            assert body["finish_reason"] == "length" and not body["valid"]
        validated = client.post("/validate", json={"dsl": dsl, "code": body["code"]}).json()
        assert validated["valid"] is lark_says
        # and for a broken copy of the same code
        broken = body["code"][: len(body["code"]) // 2] + ")("
        assert client.post("/validate", json={"dsl": dsl, "code": broken}).json()["valid"] is (
            GRAMMARS.get(dsl).parse(broken).valid
        )
    assert finished >= 2, "most short requests should finish within 160 tokens"


def test_output_cut_at_max_tokens_is_length_and_invalid(client):
    payload = {"dsl": "flow", "text": "email a@b.io then post to #x", "max_tokens": 4}
    body = client.post("/generate", json=payload).json()
    assert body["finish_reason"] == "length" and body["valid"] is False and body["error"] is not None
    assert body["usage"]["completion_tokens"] == 4


def test_candidates_on_the_engine_vote_and_say_how_sure_the_model_is(client):
    """Three constrained candidates at once; the answer is one of them, parsing if any does, with the most votes
    among those, and its confidence is the model's own per-token probability times the agreement (no adapter
    calibration), 0 for code that does not parse."""
    payload = {"dsl": "sql", "adapter": "tiny-trained", "tenant": "tiny-corp", "text": "how many customers per country",
               "context": "customers(id, name, country)", "candidates": 3, "return_candidates": True, "seed": 1,
               "max_tokens": 48}
    response = client.post("/generate", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    candidates = body["candidates"]
    assert len(candidates) == 3 and all(c["mean_logprob"] <= 0 for c in candidates), candidates
    winner = next(c for c in candidates if c["code"] == body["code"])
    peers = [c for c in candidates if c["valid"] == winner["valid"]]
    assert winner["valid"] == any(c["valid"] for c in candidates) and body["calibrated"] is False
    assert winner["votes"] == max(c["votes"] for c in peers)
    expected = math.exp(winner["mean_logprob"]) * winner["votes"] / 3 if winner["valid"] else 0.0
    assert 0 <= body["confidence"] <= 1 and math.isclose(body["confidence"], expected, rel_tol=1e-6)
    assert body["usage"]["completion_tokens"] >= 3


def test_stream_delivers_the_same_code_as_its_result(client):
    payload = {"dsl": "sql", "text": "count the orders", "context": "orders(id, total)", "stream": True}
    with client.stream("POST", "/generate", json=payload) as r:
        assert r.status_code == 200
        events = [e for e in r.read().decode().split("\n\n") if e]
    deltas = [json.loads(e.split("data: ", 1)[1])["text"] for e in events if e.startswith("event: delta")]
    result = json.loads(events[-1].split("data: ", 1)[1])
    assert events[-1].startswith("event: result") and len(deltas) >= 2
    assert "".join(deltas) == result["code"] and result["valid"] is True


def test_curl_without_json_header_works(server):
    import subprocess

    out = subprocess.run(
        ["curl", "-s", "-X", "POST", f"{server.url}/generate", "-H", f"Authorization: Bearer {ADMIN_KEY}", "-d",
         '{"dsl":"flow","text":"when a form is submitted, post the answers to #sales"}'],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    body = json.loads(out)
    assert body["finish_reason"] != "stop" or body["valid"] is True
    assert GRAMMARS.get("flow").parse(body["code"]).valid is body["valid"]


@pytest.mark.parametrize(
    "payload, status, error_type",
    [
        ({"dsl": "cobol", "text": "x"}, 404, "unknown_dsl"),
        ({"dsl": "flow", "text": "x", "adapter": "gamma"}, 404, "unknown_adapter"),
        ({"dsl": "flow", "text": ""}, 422, "invalid_request"),
        ({"dsl": "flow", "text": "x" * (Settings().max_text_chars + 1)}, 422, "invalid_request"),
        ({"dsl": "flow", "text": "x", "max_tokens": Settings().max_tokens_limit + 1}, 422, "invalid_request"),
        ({"dsl": "flow", "text": "x", "temperature": 2.5}, 422, "invalid_request"),
        ({"dsl": "flow", "text": "x", "adapter": "other-base"}, 409, "adapter_unavailable"),
        ({"dsl": "sql", "text": "x", "adapter": "beta"}, 400, "bad_request"),
    ],
)
def test_bad_input_is_refused_and_the_server_keeps_serving(client, payload, status, error_type):
    r = client.post("/generate", json=payload)
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == error_type
    payload = {"dsl": "sql", "text": "count orders", "context": "orders(id)", "max_tokens": 24}
    ok = client.post("/generate", json=payload)
    assert ok.status_code == 200


def test_probes_and_metrics(client):
    assert client.get("/healthz").json()["engine"] == "running"
    assert client.get("/readyz").status_code == 200
    client.post("/generate", json={"dsl": "flow", "text": "log a heartbeat every hour", "max_tokens": 40})
    text = client.get("/metrics").text
    assert 'nl2dsl_request_duration_seconds_bucket{adapter="base",dsl="flow"' in text
    assert "vllm:num_requests_running" in text  # the engine's own metrics on the same endpoint
