"""A client that goes away stops its generation: the engine request is aborted, not run to max_tokens."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.helpers import metric_value

LONG = {"dsl": "flow", "adapter": "base", "text": "describe every connector you know in detail", "constrained": False,
        "max_tokens": 600, "examples": 0, "temperature": 1.0, "seed": 7}


def _metric(client, name: str, **labels: str) -> float:
    return metric_value(client.get("/metrics").text, name, **labels)


def _assert_generation_stopped(client) -> None:
    """Our side let go (no request in flight) and the engine generates no more tokens for it."""
    deadline = time.monotonic() + 10
    while _metric(client, "nl2dsl_requests_in_flight") > 0:
        assert time.monotonic() < deadline, "the service still holds the request of a client that went away"
        time.sleep(0.1)
    time.sleep(1.0)  # let the engine process the abort
    tokens = _metric(client, "vllm:generation_tokens_total")
    time.sleep(3.0)  # ~20 tokens/s on this CPU: 600 max_tokens would still be running
    assert _metric(client, "vllm:generation_tokens_total") - tokens < 3, "the engine kept generating"


def test_the_long_request_really_is_long(client):
    """Guards the tests below: without an abort, this request would still be generating when they look."""
    body = client.post("/generate", json={**LONG, "max_tokens": 120}).json()
    assert body["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 120


def test_non_streaming_client_timeout_aborts_generation(server, client):
    with pytest.raises(httpx.ReadTimeout), server.client(timeout=1.0) as impatient:
        impatient.post("/generate", json=LONG)
    _assert_generation_stopped(client)


def test_streaming_client_that_closes_early_aborts_generation(client):
    with client.stream("POST", "/generate", json={**LONG, "stream": True}) as r:
        for line in r.iter_lines():
            if re.match(r"^event: delta", line):
                break  # leave after the first piece of text
    _assert_generation_stopped(client)
