"""Trust on the real service: keys and tenants, timeouts that free the engine, broken adapters isolated."""

from __future__ import annotations

import re
import shutil
import time

BODY = {"dsl": "flow", "text": "when a form is submitted, post the answers to #sales", "max_tokens": 48}


def _engine_requests(client) -> float:
    """Requests the engine is running or holding (vLLM's own gauges)."""
    text = client.get("/metrics").text
    return sum(float(v) for v in re.findall(r"^vllm:num_requests_(?:running|waiting)\{[^}]*\} (\S+)$", text, re.M))


def test_missing_key_401_and_another_tenants_adapter_is_unknown(server):
    with server.client(key=None) as anonymous, server.client(key="beta-key") as beta, \
            server.client(key="alpha-key") as alpha:
        assert anonymous.post("/generate", json=BODY).status_code == 401
        denied = beta.post("/generate", json={**BODY, "adapter": "alpha"})
        assert denied.status_code == 404 and denied.json()["error"]["type"] == "unknown_adapter"
        assert beta.post("/generate", json={**BODY, "dsl": "sql", "text": "count orders"}).status_code == 403
        assert alpha.post("/generate", json={**BODY, "adapter": "alpha"}).status_code == 200
        assert "alpha" not in [a["name"] for a in beta.get("/adapters").json()]


def test_timeout_answers_504_and_the_engine_request_is_gone(client):
    r = client.post("/generate", json={**BODY, "max_tokens": 1000, "constrained": False, "timeout_s": 0.5})
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
    deadline = time.monotonic() + 15
    while _engine_requests(client) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _engine_requests(client) == 0
    assert client.post("/generate", json=BODY).status_code == 200


def test_a_corrupt_adapter_fails_its_requests_while_others_are_served(server, client):
    with server.client(key="corrupt-key") as corrupt, server.client(key="alpha-key") as alpha:
        r = corrupt.post("/generate", json=BODY)  # corrupt-corp's own adapter: never silently another one
        assert r.status_code == 409 and "corrupt" in r.json()["error"]["message"]
        assert alpha.post("/generate", json={**BODY, "adapter": "alpha"}).status_code == 200
    listed = {a["name"]: a for a in client.get("/adapters").json()}
    assert listed["corrupt"]["available"] is False and "cut short" in listed["corrupt"]["error"]


def test_an_adapter_whose_files_vanished_fails_alone(server, client):
    """Deleted after start-up, never loaded: refused with 409 before it can reach (and kill) a batch."""
    folder = server.adapters_dir / "vanishing"
    shutil.copytree(server.adapters_dir / "beta", folder)
    manifest = folder / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("name: beta", "name: vanishing"))
    assert client.post("/adapters/reload").status_code == 200
    shutil.rmtree(folder)
    r = client.post("/generate", json={**BODY, "adapter": "vanishing"})
    assert r.status_code == 409 and "vanishing" in r.json()["error"]["message"]
    assert client.post("/generate", json={**BODY, "adapter": "beta"}).status_code == 200
    assert client.get("/readyz").status_code == 200
    client.post("/adapters/reload")


def test_every_protected_route_is_401_without_a_key(server, client):
    from service.api.auth import PUBLIC_PATHS

    spec = client.get("/openapi.json").json()
    checked = 0
    with server.client(key=None) as anonymous:
        for path, operations in spec["paths"].items():
            if path in PUBLIC_PATHS:
                continue
            for method in operations:
                r = anonymous.request(method.upper(), path.replace("{name}", "flow"), json={})
                assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized", (method, path)
                assert "401" in operations[method]["responses"], (method, path)  # declared in OpenAPI too
                checked += 1
    assert checked >= 8


def test_a_stream_that_fails_after_it_started_ends_with_an_error_event(client):
    body = {**BODY, "max_tokens": 1000, "constrained": False, "timeout_s": 0.5, "stream": True}
    with client.stream("POST", "/generate", json=body) as r:
        assert r.status_code == 200  # the status line went out before the deadline passed
        events = [e for e in r.read().decode().split("\n\n") if e]
    last = events[-1]
    assert last.startswith("event: error"), events[-3:]
    assert '"type": "timeout"' in last


def test_a_tenant_may_upload_at_most_its_quota_of_grammars(server):
    from service.config import Settings

    quota = Settings().max_grammars_per_tenant
    grammar = 'start: "k" DIGIT\nDIGIT: /[0-9]/\n'
    with server.client(key="alpha-key") as alpha:

        def upload(name: str):
            """POST /dsls, waiting out the other limit a tenant meets here: publishes a minute (this test's 22 and
            whatever alpha's other tests published in the last minute)."""
            while True:
                response = alpha.post("/dsls", json={"name": name, "grammar": grammar})
                if response.status_code != 429 or response.json()["error"]["detail"]["limit"] != "changes_per_minute":
                    return response
                time.sleep(int(response.headers["Retry-After"]))

        try:
            for i in range(quota):
                assert upload(f"q{i}").status_code == 201
            over = upload("one-too-many")
            assert over.status_code == 429 and over.json()["error"]["detail"]["limit"] == "grammars"
            assert upload("q0").status_code == 201  # replacing
        finally:
            for i in range(quota):
                alpha.delete(f"/dsls/q{i}")


def test_adapter_loads_and_evictions_are_counted(client):
    from tests.helpers import metric_value

    def counts() -> tuple[float, float]:
        text = client.get("/metrics").text
        return metric_value(text, "nl2dsl_adapter_loads_total"), metric_value(text, "nl2dsl_adapter_evictions_total")

    loads, evictions = counts()
    # The test server caches two adapters in host memory (NL2DSL_MAX_CPU_LORAS=2): a third evicts one.
    for adapter, dsl in (("alpha", "flow"), ("beta", "flow"), ("tiny-trained", "sql"), ("alpha", "flow")):
        r = client.post("/generate", json={"dsl": dsl, "text": "count the orders", "adapter": adapter,
                                           "max_tokens": 4, "context": "orders(id)"})
        assert r.status_code == 200, r.text
    after = counts()
    assert after[0] - loads >= 2 and after[1] - evictions >= 1, (loads, evictions, after)
