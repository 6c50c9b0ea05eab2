"""The HTTP API around a fake engine: request checks, error shape, SSE framing, probes (no vLLM)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import metric_value
from tests.unit.conftest import FLOW_CODE


def test_generate_returns_code_marked_valid_with_usage_and_timings(make_client):
    with make_client() as client:
        r = client.post("/generate", json={"dsl": "flow", "text": "post form answers to #sales"})
    assert r.status_code == 200
    body = r.json()
    assert body["code"] == FLOW_CODE and body["valid"] is True and body["error"] is None
    assert body["adapter"] == "base" and body["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 2 and body["usage"]["prompt_tokens"] > 10
    assert body["timings"]["total"] >= body["timings"]["ttft"] >= 0
    params = client.engine.calls[0]["params"]
    assert params.grammar and "chat__post_message" in params.grammar  # constrained to the DSL's grammar


def test_unconstrained_request_sends_no_grammar(make_client):
    with make_client() as client:
        client.post("/generate", json={"dsl": "flow", "text": "x", "constrained": False})
    assert client.engine.calls[0]["params"].grammar is None


def test_output_cut_at_max_tokens_is_reported_invalid_not_hidden(make_client):
    with make_client(pieces=["when forms.sub"], finish_reason="length") as client:
        r = client.post("/generate", json={"dsl": "flow", "text": "x", "max_tokens": 5})
    body = r.json()
    assert r.status_code == 200 and body["valid"] is False and body["finish_reason"] == "length"
    assert body["error"]["line"] == 1


@pytest.mark.parametrize(
    "payload, status, error_type",
    [
        ({"dsl": "nope", "text": "x"}, 404, "unknown_dsl"),
        ({"dsl": "flow", "text": "x", "adapter": "nope"}, 404, "unknown_adapter"),
        ({"dsl": "flow", "text": ""}, 422, "invalid_request"),
        ({"dsl": "flow", "text": "   "}, 422, "invalid_request"),
        ({"dsl": "flow", "text": "x" * 101}, 422, "invalid_request"),
        ({"dsl": "flow", "text": "x", "max_tokens": 0}, 422, "invalid_request"),
        ({"dsl": "flow", "text": "x", "max_tokens": 100_000}, 422, "invalid_request"),
        ({"dsl": "flow", "text": "x", "temperature": -1}, 422, "invalid_request"),
        ({"dsl": "flow", "text": "x", "temperature": 9}, 422, "invalid_request"),
        ({"dsl": "flow", "text": "x", "examples": 99}, 422, "invalid_request"),
        ({"dsl": "flow", "text": "x", "unknown_field": 1}, 422, "invalid_request"),
        ({"text": "x"}, 422, "invalid_request"),
    ],
)
def test_bad_input_gets_its_status_and_the_one_error_shape(make_client, payload, status, error_type):
    with make_client() as client:
        r = client.post("/generate", json=payload)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["type"] == error_type and error["message"]
        assert client.post("/generate", json={"dsl": "flow", "text": "x"}).status_code == 200  # still serving


def test_invalid_json_is_a_422_in_the_error_shape(make_client):
    with make_client() as client:
        r = client.post("/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request"


def test_curl_style_form_content_type_is_read_as_json(make_client):
    with make_client() as client:
        r = client.post("/generate", content=json.dumps({"dsl": "flow", "text": "x"}),
                        headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and r.json()["valid"]


def test_prompt_longer_than_the_model_is_refused(make_client):
    with make_client(max_model_len=64, max_text_chars=2000) as client:
        r = client.post("/generate", json={"dsl": "flow", "text": "send an email " * 50})
    assert r.status_code == 422 and "max_model_len" in json.dumps(r.json())


def test_stream_sends_deltas_then_the_result(make_client):
    payload = {"dsl": "flow", "text": "x", "stream": True}
    with make_client() as client, client.stream("POST", "/generate", json=payload) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [block for block in r.read().decode().split("\n\n") if block]
    kinds = [block.split("\n")[0] for block in events]
    assert kinds == ["event: delta", "event: delta", "event: result"]
    deltas = "".join(json.loads(b.split("data: ", 1)[1])["text"] for b in events[:2])
    result = json.loads(events[-1].split("data: ", 1)[1])
    assert deltas == result["code"] == FLOW_CODE and result["valid"]


def test_stream_errors_before_generation_are_plain_json(make_client):
    with make_client() as client:
        r = client.post("/generate", json={"dsl": "nope", "text": "x", "stream": True})
    assert r.status_code == 404 and r.json()["error"]["type"] == "unknown_dsl"


def test_validate_agrees_with_the_grammar_and_points_at_the_error(make_client):
    with make_client() as client:
        ok = client.post("/validate", json={"dsl": "flow", "code": FLOW_CODE}).json()
        bad = client.post("/validate", json={"dsl": "flow", "code": FLOW_CODE.replace("chat.post", "chat.pst")}).json()
        missing = client.post("/validate", json={"dsl": "nope", "code": "x"})
    assert {k: ok[k] for k in ("valid", "dsl", "error")} == {"valid": True, "dsl": "flow", "error": None}
    assert ok["tree"].startswith("start\n") and "chat__post_message" in ok["tree"]
    assert bad["valid"] is False and (bad["error"]["line"], bad["error"]["column"]) == (2, 6)
    assert missing.status_code == 404


def test_dsls_and_adapters_are_listed(make_client):
    with make_client() as client:
        dsls = {d["name"]: d for d in client.get("/dsls").json()}
        assert {"flow", "sql"} <= set(dsls) and "chat.post_message" in dsls["flow"]["operations"]
        assert "SELECT " in client.get("/dsls/sql").json()["grammar"]
        assert dsls["flow"]["tenants"] == ["contoso", "fabrikam"]
        contoso = client.get("/dsls/flow", params={"tenant": "contoso"}).json()
        assert contoso["tenant"] == "contoso" and "crm.create_lead" in contoso["operations"]
        assert "crm.create_lead" not in dsls["flow"]["operations"]
        assert client.get("/dsls/nope").status_code == 404
        assert client.get("/adapters").json() == []


def test_probes_follow_the_engine(make_client):
    with make_client() as client:
        assert client.get("/healthz").json()["engine"] == "running"
        assert client.get("/readyz").status_code == 200
        client.engine.ready = False
        assert client.get("/readyz").status_code == 503
        r = client.post("/generate", json={"dsl": "flow", "text": "x"})
        assert r.status_code == 503 and r.json()["error"]["type"] == "engine_unavailable"


def test_unknown_route_uses_the_error_shape(make_client):
    with make_client() as client:
        r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


def test_a_tenant_request_is_constrained_by_the_tenant_grammar(make_client):
    with make_client() as client:
        client.post("/generate", json={"dsl": "flow", "text": "x", "tenant": "contoso"})
        client.post("/generate", json={"dsl": "flow", "text": "x", "tenant": "fabrikam"})
    contoso, fabrikam = (call["params"].grammar for call in client.engine.calls)
    assert "crm__create_lead" in contoso and "erp__" not in contoso
    assert "erp__post_invoice" in fabrikam and "crm__" not in fabrikam


def test_metrics_count_requests_by_status_including_refusals(make_client):
    with make_client() as client:
        before = client.get("/metrics").text
        client.post("/generate", json={"dsl": "flow", "text": "post form answers to #sales"})
        client.post("/generate", json={"dsl": "nope", "text": "x"})
        client.post("/generate", json={"dsl": "flow", "text": "   "})  # refused by the handler: dsl known
        client.post("/generate", json={"dsl": "flow", "text": "x", "max_tokens": 0})  # refused by pydantic
        after = client.get("/metrics").text

    def delta(name, **labels):
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("nl2dsl_requests_total", dsl="flow", adapter="base", status="200") == 1
    assert delta("nl2dsl_requests_total", dsl="unknown", status="404") == 1
    assert delta("nl2dsl_requests_total", dsl="flow", status="422") == 1
    assert delta("nl2dsl_requests_total", dsl="unknown", status="422") == 1
    assert delta("nl2dsl_request_duration_seconds_count", dsl="flow", adapter="base", status="ok") == 1
    assert delta("nl2dsl_time_per_output_token_seconds_count", dsl="flow", adapter="base") == 1
    assert metric_value(after, "nl2dsl_requests_in_flight") == 0 and metric_value(after, "nl2dsl_requests_queued") == 0
    assert 'dsl="nope"' not in after  # raw input never becomes a label


def test_each_shipped_grammar_is_compiled_once_per_process_and_counted(make_client):
    """The compile histogram counts the shipped grammars (flow and sql) compiled at start-up, and a second app in
    the same process compiles neither again (a bounded per-process cache: service/grammars/compile.py)."""
    from prometheus_client import REGISTRY

    from service.grammars.compile import _check_operator_grammar

    def compiled() -> float:
        return REGISTRY.get_sample_value("nl2dsl_grammar_compile_seconds_count", {"origin": "shipped"}) or 0.0

    _check_operator_grammar.cache_clear()
    before = compiled()
    with make_client() as client:
        assert client.get("/metrics").status_code == 200
    assert compiled() - before == 2
    with make_client():
        pass
    assert compiled() - before == 2


def test_every_route_declares_the_errors_it_can_return(make_client):
    from service.api.auth import PUBLIC_PATHS

    with make_client() as client:
        spec = client.get("/openapi.json").json()
    declared = {(method.upper(), path): set(op["responses"]) for path, ops in spec["paths"].items()
                for method, op in ops.items()}
    for (method, path), codes in declared.items():
        if path not in PUBLIC_PATHS:
            assert {"401", "413"} <= codes, (method, path, codes)
    assert {"400", "401", "403", "404", "409", "413", "422", "429", "503", "504"} <= declared[("POST", "/generate")]
    assert {"400", "403", "413", "422", "429"} <= declared[("POST", "/dsls")]
    assert "400" in declared[("POST", "/validate")] and "503" in declared[("GET", "/readyz")]
    error = spec["components"]["schemas"]["ErrorResponse"]
    assert error["properties"]["error"]["$ref"].endswith("/ErrorBody")  # one shape for every error


def test_a_body_that_is_not_json_says_where_decoding_stopped_in_words(make_client):
    with make_client() as client:
        r = client.post("/generate", content=b'{"dsl": "flow",, "text": "x"}',
                        headers={"Content-Type": "application/json"})
    error = r.json()["error"]
    assert r.status_code == 422 and error["param"] is None
    assert "at character 15 of the body" in error["message"], error["message"]
