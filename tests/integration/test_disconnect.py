"""A client that goes away stops its generation: the engine request is aborted, not run to max_tokens."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.helpers import assert_generation_stopped

#: A request that would run for half a minute unless aborted.
LONG = {"dsl": "flow", "adapter": "base", "text": "describe every connector you know in detail", "constrained": False,
        "max_tokens": 600, "examples": 0, "temperature": 1.0, "seed": 7}


def test_the_long_request_really_is_long(client):
    """Guards the tests below: without an abort, this request would still be generating when they look."""
    body = client.post("/generate", json={**LONG, "max_tokens": 120}).json()
    assert body["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 120


def test_non_streaming_client_timeout_aborts_generation(server, client):
    with pytest.raises(httpx.ReadTimeout), server.client(timeout=1.0) as impatient:
        impatient.post("/generate", json=LONG)
    assert_generation_stopped(client)


def test_streaming_client_that_closes_early_aborts_generation(client):
    with client.stream("POST", "/generate", json={**LONG, "stream": True}) as r:
        for line in r.iter_lines():
            if re.match(r"^event: delta", line):
                break  # leave after the first piece of text
    assert_generation_stopped(client)
