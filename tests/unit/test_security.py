"""API keys, tenants and permissions (401/403), admission (429), timeouts (504) — around a fake engine."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from service.adapters import Adapter
from service.engine.core import _until
from service.errors import GenerationTimeout, RateLimited
from service.limits import Admission
from service.security import Caller, hash_key

KEYS = {"admin-secret": {"admin": True}, "contoso-secret": {"tenant": "contoso", "dsls": ["flow"]},
        "fabrikam-secret": {"tenant": "fabrikam"}}


@pytest.fixture()
def keyed_client(make_client, tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [{"sha256": hash_key(k), **v} for k, v in KEYS.items()]}))

    def make(**settings):
        return make_client(auth="keys", api_keys_file=path, **settings)

    return make


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


BODY = {"dsl": "flow", "text": "post form answers to #sales"}


def test_no_key_or_an_unknown_key_is_401_with_the_error_shape(keyed_client):
    with keyed_client() as client:
        missing = client.post("/generate", json=BODY)
        unknown = client.post("/generate", json=BODY, headers=_auth("guess"))
        probes = [client.get(p).status_code for p in ("/healthz", "/readyz")]
    assert missing.status_code == unknown.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["type"] == "unauthorized" and "API key" in missing.json()["error"]["message"]
    assert probes == [200, 200]  # probes stay open for Kubernetes


def test_with_keys_on_the_api_port_serves_no_metrics_unless_told_to(keyed_client):
    # Metrics describe every tenant's traffic: with keys on they are off the API port by default (the chart
    # serves them on NL2DSL_METRICS_PORT, which only Prometheus's namespaces reach).
    with keyed_client() as client:
        assert client.get("/metrics").status_code == 404
        assert client.get("/metrics", headers=_auth("contoso-secret")).status_code == 404
    with keyed_client(metrics_on_api=True) as client:
        assert "nl2dsl_requests_in_flight" in client.get("/metrics").text


def test_a_tenant_key_runs_as_its_tenant_and_cannot_name_another(keyed_client):
    with keyed_client() as client:
        own = client.post("/generate", json=BODY, headers=_auth("contoso-secret"))
        other = client.post("/generate", json={**BODY, "tenant": "fabrikam"}, headers=_auth("contoso-secret"))
        as_admin = client.post("/generate", json={**BODY, "tenant": "fabrikam"}, headers=_auth("admin-secret"))
        x_api_key = client.post("/generate", json=BODY, headers={"X-API-Key": "fabrikam-secret"})
    assert own.status_code == 200 and as_admin.status_code == 200 and x_api_key.status_code == 200
    assert other.status_code == 403 and other.json()["error"]["type"] == "forbidden"


def test_a_key_limited_to_some_dsls_gets_403_for_the_others(keyed_client):
    with keyed_client() as client:
        r = client.post("/generate", json={"dsl": "sql", "text": "count orders"}, headers=_auth("contoso-secret"))
        listed = [d["name"] for d in client.get("/dsls", headers=_auth("contoso-secret")).json()]
    assert r.status_code == 403 and "sql" in r.json()["error"]["message"]
    assert listed == ["flow"]


def test_keys_never_reach_the_logs_or_metrics(keyed_client, caplog):
    caplog.set_level(logging.DEBUG)
    with keyed_client(metrics_on_api=True) as client:
        client.post("/generate", json=BODY, headers=_auth("contoso-secret"))
        client.post("/generate", json=BODY, headers=_auth("not-a-key-xyz"))
        metrics = client.get("/metrics").text
    assert "nl2dsl_requests_total" in metrics
    for secret in ("contoso-secret", "not-a-key-xyz", hash_key("contoso-secret")):
        assert secret not in caplog.text and secret not in metrics


def test_only_an_admin_may_reload_adapters(keyed_client):
    with keyed_client() as client:
        tenant = client.post("/adapters/reload", headers=_auth("contoso-secret"))
        admin = client.post("/adapters/reload", headers=_auth("admin-secret"))
    assert tenant.status_code == 403 and admin.status_code == 200


@given(owners=st.lists(st.one_of(st.none(), st.sampled_from(["contoso", "fabrikam", "*x"])), max_size=3),
       tenant=st.one_of(st.none(), st.sampled_from(["contoso", "fabrikam"])), admin=st.booleans())
def test_one_access_rule_for_what_tenants_own(owners, tenant, admin):
    """Use: shared things (None) serve everyone, a tenant's serve it, an admin uses anything. Manage: only the
    tenant's own, or anything for an admin; a shared thing is never a tenant's to manage."""
    caller = Caller("k", tenant=tenant, admin=admin)
    assert caller.may_use(owners) == (admin or None in owners or (tenant is not None and tenant in owners))
    for owner in owners:
        assert caller.may_manage(owner) == (admin or (owner is not None and owner == tenant))


def test_the_one_access_rule_for_adapters():
    own = Adapter("contoso", path=None, lora_id=1, tenants=("contoso",))
    shared = Adapter("flow-general", path=None, lora_id=2)
    contoso, fabrikam, admin = Caller("a", tenant="contoso"), Caller("b", tenant="fabrikam"), Caller("c", admin=True)
    assert own.usable_by(contoso) and shared.usable_by(contoso) and shared.usable_by(fabrikam)
    assert not own.usable_by(fabrikam) and not own.usable_by(Caller("d"))  # no tenant: shared ones only
    assert own.usable_by(admin) and own.usable_by(admin, tenant="fabrikam")


def test_a_full_queue_answers_429_with_retry_after(make_client):
    with make_client(delay=0.5, max_queue=1) as client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.post, "/generate", json=BODY)
        time.sleep(0.2)
        second = client.post("/generate", json=BODY)
        assert first.result().status_code == 200
        third = client.post("/generate", json=BODY)  # the queue has room again
    assert second.status_code == 429 and int(second.headers["retry-after"]) >= 1
    assert second.json()["error"]["type"] == "rate_limited" and third.status_code == 200


def test_admission_caps_each_tenant_and_frees_on_release():
    admission = Admission(max_queue=10, per_tenant=2)
    a, b = admission.admit("contoso"), admission.admit("contoso")
    with pytest.raises(RateLimited) as refused:
        admission.admit("contoso")
    assert refused.value.detail["limit"] == "tenant"
    other = admission.admit("fabrikam")  # other tenants are not held back
    a.release()
    a.release()  # idempotent
    admission.admit("contoso")
    assert admission.outstanding == 3
    b.release()
    other.release()


def test_timeout_over_the_service_maximum_is_422(make_client):
    with make_client(request_timeout_s=30) as client:
        r = client.post("/generate", json={**BODY, "timeout_s": 31})
    assert r.status_code == 422 and "timeout_s" in r.json()["error"]["message"]


def test_the_engine_stream_stops_at_the_deadline():
    async def slow():
        for i in range(100):
            await asyncio.sleep(0.05)
            yield i

    async def consume():
        got = []
        with pytest.raises(GenerationTimeout):
            async for item in _until(slow(), time.monotonic() + 0.2):
                got.append(item)
        return got

    assert 1 <= len(asyncio.run(consume())) < 10
