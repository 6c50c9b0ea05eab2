"""nl2dsl-client (clients/python) without a service: its public surface, its light dependencies, its retry
policy and its stream reading, over httpx's mock transport. (Against the real service:
tests/integration/test_client_package.py.)"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import tomllib
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import nl2dsl_client
import pytest
from nl2dsl_client import (
    AsyncNL2DSLClient,
    BadRequestError,
    NL2DSLClient,
    RateLimitError,
    RetryPolicy,
    ServiceUnavailableError,
)

ROOT = Path(__file__).resolve().parents[2]
RESULT = {"request_id": "r1", "code": "port=80", "valid": True, "dsl": "kv", "adapter": "base", "finish_reason": "stop",
          "usage": {"prompt_tokens": 9, "completion_tokens": 3}, "timings": {"total": 0.1}}


def _error(status: int, type_: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"type": type_, "message": f"{type_}!", "detail": None}},
                          headers=headers)


class Script:
    """A mock transport answering each request with the next response (or raising the next exception)."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture()
def waits(monkeypatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    return slept


def _client(script: Script, **options) -> NL2DSLClient:
    return NL2DSLClient("http://nl2dsl.test", api_key="k", transport=httpx.MockTransport(script), **options)


def test_the_public_surface_is_pinned():
    assert set(nl2dsl_client.__all__) == {
        "APIConnectionError", "APIError", "APITimeoutError", "Adapter", "AsyncNL2DSLClient", "AsyncStream",
        "AuthenticationError", "BadRequestError", "Candidate", "ConflictError", "DSL", "GenerateResult",
        "GenerationTimeoutError", "NL2DSLClient", "NL2DSLError", "NotFoundError", "ParseError",
        "PermissionDeniedError", "RateLimitError",
        "RetryPolicy", "ServiceUnavailableError", "Stream", "Timings", "UnprocessableEntityError", "Usage",
        "ValidationResult"}
    assert all(hasattr(nl2dsl_client, name) for name in nl2dsl_client.__all__)


def test_the_client_needs_httpx_and_pydantic_only():
    project = tomllib.loads((ROOT / "clients/python/pyproject.toml").read_text())["project"]
    assert sorted(dep.split(">")[0] for dep in project["dependencies"]) == ["httpx", "pydantic"]
    loaded = subprocess.run([sys.executable, "-c", "import sys, nl2dsl_client; print(' '.join(sys.modules))"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert not {"service", "vllm", "torch", "transformers"} & set(loaded)


def test_a_generate_sends_the_key_and_the_options_and_reads_the_result(waits):
    script = Script(httpx.Response(200, json=RESULT))
    with _client(script) as client:
        result = client.generate(dsl="kv", text="listen on 80", adapter="base", examples=None, max_tokens=8)
    (request,) = script.requests
    assert request.headers["authorization"] == "Bearer k" and request.url.path == "/generate"
    assert json.loads(request.content) == {"dsl": "kv", "text": "listen on 80", "adapter": "base", "max_tokens": 8}
    assert result.code == "port=80" and result.valid and result.usage.completion_tokens == 3 and not waits


def test_429_waits_as_retry_after_says_then_succeeds(waits):
    script = Script(_error(429, "rate_limited", {"Retry-After": "2"}), httpx.Response(200, json=RESULT))
    with _client(script) as client:
        assert client.generate(dsl="kv", text="x").valid
    assert waits == [2.0] and len(script.requests) == 2


def test_retry_after_as_an_http_date_is_honoured(waits):
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    script = Script(_error(503, "engine_unavailable", {"Retry-After": later}), httpx.Response(200, json=RESULT))
    with _client(script) as client:
        client.generate(dsl="kv", text="x")
    assert len(waits) == 1 and 3.0 < waits[0] <= 5.0


def test_without_retry_after_the_wait_backs_off(waits):
    script = Script(_error(503, "engine_unavailable"), _error(503, "engine_unavailable"),
                    httpx.Response(200, json=RESULT))
    with _client(script, retry=RetryPolicy(max_retries=2, base_s=1.0)) as client:
        client.generate(dsl="kv", text="x")
    assert len(waits) == 2 and 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0


def test_a_service_that_stays_full_raises_after_the_retries(waits):
    script = Script(*[_error(429, "rate_limited", {"Retry-After": "1"})] * 3)
    with _client(script, max_retries=2) as client, pytest.raises(RateLimitError) as raised:
        client.generate(dsl="kv", text="x")
    assert raised.value.status == 429 and raised.value.type == "rate_limited" and waits == [1.0, 1.0]


def test_a_wait_longer_than_the_client_allows_is_not_waited(waits):
    script = Script(_error(429, "rate_limited", {"Retry-After": "600"}))
    with _client(script) as client, pytest.raises(RateLimitError) as raised:
        client.generate(dsl="kv", text="x")
    assert raised.value.retry_after == 600
    assert waits == [] and len(script.requests) == 1


@pytest.mark.parametrize("status,type_", [(400, "grammar_invalid"), (422, "invalid_request"), (504, "timeout")])
def test_other_errors_are_raised_at_once(waits, status, type_):
    script = Script(_error(status, type_))
    with _client(script) as client, pytest.raises(nl2dsl_client.APIError) as raised:
        client.generate(dsl="kv", text="x")
    assert raised.value.status == status and raised.value.type == type_ and not waits
    if status == 400:
        assert isinstance(raised.value, BadRequestError)


def test_a_refused_connection_is_retried_then_reported(waits):
    refused = httpx.ConnectError("connection refused")
    with _client(Script(refused, refused, refused)) as client, pytest.raises(nl2dsl_client.APIConnectionError):
        client.dsls()
    assert len(waits) == 2


def _sse(*events: tuple[str, dict]) -> bytes:
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events).encode()


def test_a_stream_yields_the_text_then_holds_the_result(waits):
    body = _sse(("delta", {"text": "port"}), ("delta", {"text": "=80"}), ("result", RESULT))
    script = Script(_error(429, "rate_limited", {"Retry-After": "1"}),
                    httpx.Response(200, content=body, headers={"content-type": "text/event-stream"}))
    with _client(script) as client, client.stream(dsl="kv", text="listen on 80") as stream:
        pieces = list(stream)
    assert pieces == ["port", "=80"] and stream.result.code == "port=80" and waits == [1.0]
    assert json.loads(script.requests[-1].content)["stream"] is True


def test_an_error_in_the_stream_is_raised_as_its_type():
    body = _sse(("delta", {"text": "port"}),
                ("error", {"error": {"type": "engine_unavailable", "message": "engine died", "code": 503}}))
    with _client(Script(httpx.Response(200, content=body))) as client, \
            pytest.raises(ServiceUnavailableError, match="engine died"):
        list(client.stream(dsl="kv", text="x"))


def test_the_async_client_retries_and_streams_the_same(monkeypatch):
    slept: list[float] = []

    async def sleep(seconds):
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    body = _sse(("delta", {"text": "port=80"}), ("result", RESULT))
    script = Script(_error(503, "engine_unavailable", {"Retry-After": "3"}), httpx.Response(200, json=RESULT),
                    httpx.Response(200, content=body))

    async def main():
        async with AsyncNL2DSLClient("http://nl2dsl.test", transport=httpx.MockTransport(script)) as client:
            result = await client.generate(dsl="kv", text="x")
            async with await client.stream(dsl="kv", text="x") as stream:
                pieces = [piece async for piece in stream]
            return result, pieces, stream.result

    result, pieces, streamed = asyncio.run(main())
    assert result.valid and pieces == ["port=80"] and streamed.code == "port=80" and slept == [3.0]


def test_the_clients_models_read_what_the_service_answers():
    """Every field the service documents for these answers is a field of the client's models (or kept as extra)."""
    from service.api.adapters import AdapterInfo
    from service.api.dsls import DSLInfo
    from service.api.generate.schemas import GenerateResponse
    from service.api.validate import ValidateResponse

    pairs = [(GenerateResponse, nl2dsl_client.GenerateResult), (ValidateResponse, nl2dsl_client.ValidationResult),
             (DSLInfo, nl2dsl_client.DSL), (AdapterInfo, nl2dsl_client.Adapter)]
    for server, client in pairs:
        required_here = {name for name, f in client.model_fields.items() if f.is_required()}
        assert required_here <= set(server.model_fields), (client, required_here - set(server.model_fields))
        assert client.model_config.get("extra") == "allow"
    assert set(GenerateResponse.model_fields) == set(nl2dsl_client.GenerateResult.model_fields)
