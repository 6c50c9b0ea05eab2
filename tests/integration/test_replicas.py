"""A second replica on the session server's store, both on the real engine: each serves what the other publishes
(a DSL, its versions and rollback, a LoRA adapter); its per-tenant limit answers 429 over HTTP; and one whose
engine dies stops being ready while the other goes on serving. (Restarts on the store are unit-tested:
tests/unit/test_publishing.py.)"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from service.adapters import pack_adapter
from tests.helpers import eventually, listening_process, make_random_adapter, wait_in_flight

KV = 'start: pair ("\\n" pair)*\npair: KEY "=" VALUE\nKEY: /[a-z]+/\nVALUE: /[a-z0-9]+/\n'
KV2 = 'start: "set " KEY " to " VALUE\nKEY: /[a-z]+/\nVALUE: /[a-z0-9]+/\n'
ALPHA = {"Authorization": "Bearer alpha-key"}
ASK = {"dsl": "kv", "text": "set the port to 80", "max_tokens": 24}
SYNC_S = 180


@pytest.fixture(scope="module")
def second(replica):
    """alpha-corp's client of the second replica (one request per tenant at a time: tests/conftest.py)."""
    with Replica(replica.url, replica.log) as client:
        yield client


class Replica(httpx.Client):
    """alpha-corp's client of the second replica, which knows where that server logs."""

    def __init__(self, url: str, log: Path) -> None:
        super().__init__(base_url=url, headers=ALPHA, timeout=300)
        self.url, self.log = url, log


def test_two_replicas_on_one_store_serve_what_either_publishes(server, second, tmp_path):
    upload = {"name": "kv", "grammar": KV, "examples": [{"text": "listen on port 80", "code": "port=80"}]}
    assert second.post("/dsls", json=upload).status_code == 201
    adapter = pack_adapter(make_random_adapter(server.model_dir, tmp_path / "crm", seed=5, dsl="flow"))
    # Replicas follow the store by polling it; the bound is generous for a busy 2-core machine, not a speed.
    with server.client("alpha-key") as first:
        try:
            assert first.post("/adapters", content=adapter).status_code == 201
            eventually(lambda: first.get("/dsls/kv").status_code == 200, "the first replica serves the DSL",
                       timeout=SYNC_S)
            eventually(lambda: "crm" in [a["name"] for a in second.get("/adapters").json()],
                       "the second replica serves the adapter", timeout=SYNC_S)
            for replica in (first, second):
                generated = replica.post("/generate", json=ASK).json()
                assert generated["finish_reason"] != "stop" or generated["valid"], generated
                flow = replica.post("/generate", json={"dsl": "flow", "text": "post form answers to #sales",
                                                       "adapter": "crm", "max_tokens": 16})
                assert flow.status_code == 200 and flow.json()["adapter"] == "crm", flow.text
            # A new version published on one replica and a rollback on the other reach both.
            assert first.post("/dsls", json={"name": "kv", "grammar": KV2}).json()["version"] == 2
            eventually(lambda: second.get("/dsls/kv").json()["grammar"] == KV2, "the new version everywhere",
                       timeout=SYNC_S)
            assert second.post("/dsls/kv/rollback", json={"version": 1}).json()["version"] == 3
            eventually(lambda: first.get("/dsls/kv").json()["grammar"] == KV, "the rollback everywhere",
                       timeout=SYNC_S)
            assert first.post("/generate", json=ASK).status_code == 200
        finally:  # alpha-corp's DSL and adapter must not outlive the test, pass or fail (its quota, its flows)
            first.delete("/dsls/kv")
            first.delete("/adapters/crm")


def test_a_tenant_over_its_concurrency_gets_429_with_retry_after(second):
    ask = {"dsl": "flow", "text": "when a form is submitted, post the answers to #sales", "max_tokens": 64}
    first = threading.Thread(target=lambda: second.post("/generate", json=ask))
    first.start()
    wait_in_flight(second.url, 1, second.log)  # alpha-corp's request is being served
    refused = second.post("/generate", json=ask)
    other = second.post("/generate", json={**ask, "max_tokens": 8}, headers={"Authorization": "Bearer beta-key"})
    first.join(timeout=300)
    assert refused.status_code == 429 and refused.json()["error"]["detail"]["limit"] == "tenant"
    assert int(refused.headers["retry-after"]) >= 1
    assert other.status_code == 200, other.text  # other tenants are not held back


@pytest.mark.stops_replica
def test_a_replica_whose_engine_dies_stops_being_ready_and_the_other_goes_on(server, second):
    """It kills the second replica's engine: run after every test that uses it."""
    engine_processes = listening_process(second.url).children(recursive=True)
    assert engine_processes
    for child in engine_processes:
        child.kill()
    eventually(lambda: second.get("/readyz").status_code == 503, "/readyz is 503 after the engine died")
    r = second.post("/generate", json={"dsl": "flow", "text": "post form answers to #sales"}, timeout=10)
    assert r.status_code == 503 and r.json()["error"]["type"] == "engine_unavailable"  # at once, not a hang
    assert second.get("/healthz").status_code == 503  # liveness fails: Kubernetes restarts this one
    with server.client("alpha-key") as first:
        assert first.get("/readyz").status_code == 200
        assert first.post("/generate", json={"dsl": "flow", "text": "post form answers to #sales",
                                             "max_tokens": 8}).status_code == 200
