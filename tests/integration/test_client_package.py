"""nl2dsl-client (clients/python) against the real service: every call a product backend makes, the retry on a
real 429, and a stream the client leaves early (its engine request is aborted)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from nl2dsl_client import AsyncNL2DSLClient, NL2DSLClient, NotFoundError, PermissionDeniedError, RetryPolicy

from tests.conftest import ADMIN_KEY
from tests.helpers import assert_generation_stopped, holding_a_slot, metric_value

SQL = {"dsl": "sql", "text": "count the orders", "context": "orders(id, total)", "max_tokens": 64}
KV = 'start: pair\npair: KEY "=" VALUE\nKEY: /[a-z]{1,16}/\nVALUE: /[a-z0-9]{1,16}/\n'


def test_generate_stream_and_validate_agree(server):
    with NL2DSLClient(server.url, api_key=ADMIN_KEY, timeout=300) as client:
        whole = client.generate(**SQL)
        with client.stream(**SQL) as stream:
            pieces = list(stream)
        checked = client.validate(dsl="sql", code=whole.code)
    assert whole.valid and whole.finish_reason == "stop" and whole.usage.completion_tokens > 0
    assert len(pieces) >= 2 and "".join(pieces) == whole.code == stream.result.code
    assert checked.valid and checked.tree


def test_a_tenant_lists_uploads_and_uses_its_own_dsl(server):
    with NL2DSLClient(server.url, api_key="alpha-key", timeout=300) as client:
        uploaded = client.upload_dsl(name="kvclient", grammar=KV, examples=[{"text": "port 80", "code": "port=80"}])
        try:
            added = client.add_examples("kvclient", '{"text": "host is db", "code": "host=db"}\n')
            listed = {d.name for d in client.dsls()}
            result = client.generate(dsl="kvclient", text="listen on port 8080", max_tokens=16)
        finally:
            client.delete_dsl("kvclient")
        adapters = {a.name for a in client.adapters()}
        with pytest.raises(NotFoundError):
            client.dsl("kvclient")
    assert uploaded.version == 1 and uploaded.start == "start" and added["added"] == 1
    assert {"flow", "sql", "kvclient"} <= listed and "alpha" in adapters and "tiny-trained" not in adapters
    assert result.dsl == "kvclient" and (result.valid or result.finish_reason == "length")


def test_errors_are_typed(server):
    with NL2DSLClient(server.url, api_key="beta-key") as client, pytest.raises(PermissionDeniedError) as raised:
        client.generate(dsl="sql", text="count the orders")  # beta's key may use flow only
    assert raised.value.status == 403 and raised.value.type == "forbidden"


def test_a_429_is_waited_out_and_retried(replica):
    def refused() -> float:
        return metric_value(httpx.get(f"{replica.url}/metrics").text, "nl2dsl_requests_total", status="429")

    before = refused()
    # Retry-After can say 1 s (the service's typical request so far): enough tries to outlast the held request on a
    # loaded machine (30 ran out once while it generated), as long as its own timeout.
    retry = RetryPolicy(max_retries=300, max_wait_s=60)
    with NL2DSLClient(replica.url, api_key="alpha-key", timeout=300, retry=retry) as client, \
            holding_a_slot(replica.url, "alpha-key", replica.log):
        result = client.generate(dsl="flow", text="post form answers to #sales", max_tokens=8)
    assert result.usage.completion_tokens > 0 and refused() > before  # refused first, served after the wait


def test_the_async_client_generates_concurrently(server):
    async def main():
        async with AsyncNL2DSLClient(server.url, api_key=ADMIN_KEY, timeout=300) as client:
            return await asyncio.gather(client.generate(**SQL), client.generate(**{**SQL, "text": "sum the totals"}))

    first, second = asyncio.run(main())
    assert first.valid and second.valid and first.request_id != second.request_id


def test_a_stream_left_early_aborts_its_generation(server, client):
    long = {"dsl": "flow", "adapter": "base", "text": "describe every connector you know in detail",
            "constrained": False, "max_tokens": 600, "examples": 0, "temperature": 1.0, "seed": 7}
    with NL2DSLClient(server.url, api_key=ADMIN_KEY, timeout=300) as sdk, sdk.stream(**long) as stream:
        next(iter(stream))  # the first piece, then leave
    assert_generation_stopped(client)
