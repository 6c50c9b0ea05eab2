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


def test_missing_key_401_and_another_tenants_adapter_403(server):
    with server.client(key=None) as anonymous, server.client(key="beta-key") as beta, \
            server.client(key="alpha-key") as alpha:
        assert anonymous.post("/generate", json=BODY).status_code == 401
        denied = beta.post("/generate", json={**BODY, "adapter": "alpha"})
        assert denied.status_code == 403 and "another tenant" in denied.json()["error"]["message"]
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
