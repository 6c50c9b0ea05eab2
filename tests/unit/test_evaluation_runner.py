"""The evaluation runner as a client: every row gets an outcome, an error answer included, and a full (429) or
busy (503) service is asked again (the client's retries: clients/python's tests)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import httpx
import pytest

from service.evaluation import runner
from service.grammars import Example

RESULT = {"request_id": "r", "code": "a = 1", "valid": True, "dsl": "kv", "adapter": "base", "finish_reason": "stop",
          "usage": {"prompt_tokens": 9, "completion_tokens": 3}, "timings": {"total": 0.1}}
FULL = (429, {"error": {"type": "rate_limited", "message": "slow down"}}, {"Retry-After": "1"})
BUSY = (503, {"error": {"type": "engine_unavailable", "message": "busy"}}, {})


@pytest.fixture()
def answers(monkeypatch):
    """What the service answers each request, in turn (status, body, headers), at httpx's boundary; the requests
    made and the waits between them."""
    script: list = []
    calls: list[str] = []
    waits: list[float] = []

    async def send(self, request, **kwargs):
        calls.append(json.loads(request.content)["text"])
        status, body, headers = script.pop(0)
        return httpx.Response(status, json=body, headers=headers, request=request)

    async def sleep(seconds):
        waits.append(seconds)

    monkeypatch.setattr(httpx.AsyncClient, "send", send)
    monkeypatch.setattr(asyncio, "sleep", sleep)
    return SimpleNamespace(script=script, calls=calls, waits=waits)


def _run(n: int = 1) -> list[runner.Outcome]:
    rows = [Example(text=f"t{i}", code="a = 1") for i in range(n)]
    return asyncio.run(runner.run("http://127.0.0.1:9", runner.RunConfig("x", "kv"), rows, progress=False))


def test_429_and_503_are_retried_until_an_answer(answers):
    answers.script += [FULL, BUSY, (200, RESULT, {})]
    [outcome] = _run()
    assert outcome.error is None and outcome.exact and outcome.completion_tokens == 3
    assert len(answers.calls) == 3 and answers.waits[0] == 1.0 and len(answers.waits) == 2  # Retry-After, back-off


def test_other_errors_are_an_outcome_at_once(answers):
    answers.script += [(422, {"error": {"type": "invalid_request", "message": "bad text"}}, {})]
    [outcome] = _run()
    assert outcome.finish_reason == "error" and "bad text" in outcome.error and not outcome.valid
    assert len(answers.calls) == 1 and answers.waits == []


def test_a_service_that_stays_full_gives_an_error_outcome_not_a_hang(answers):
    answers.script += [FULL] * (runner._RETRIES + 1)
    [outcome] = _run()
    assert outcome.finish_reason == "error" and "slow down" in outcome.error
    assert len(answers.calls) == runner._RETRIES + 1 and answers.script == []
