"""The evaluation runner as a client: a full (429) or busy (503) service is asked again, other errors are not."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from service.client import APIError, AsyncNL2DSLClient
from service.evaluation import runner
from service.grammars import Example


@pytest.fixture()
def answers(monkeypatch):
    """What the service answers each request, in turn (an APIError is raised); the calls and the waits made."""
    script: list = []
    calls: list[str] = []
    waits: list[float] = []

    async def generate(self, *, dsl, text, **options):
        calls.append(text)
        answer = script.pop(0)
        if isinstance(answer, APIError):
            raise answer
        return SimpleNamespace(code=answer, valid=True, finish_reason="stop", timings=SimpleNamespace(total=0.1),
                               usage=SimpleNamespace(completion_tokens=3))

    async def sleep(seconds):
        waits.append(seconds)

    monkeypatch.setattr(AsyncNL2DSLClient, "generate", generate)
    monkeypatch.setattr(asyncio, "sleep", sleep)
    return SimpleNamespace(script=script, calls=calls, waits=waits)


def _run(n: int = 1) -> list[runner.Outcome]:
    rows = [Example(text=f"t{i}", code="a = 1") for i in range(n)]
    return asyncio.run(runner.run("http://127.0.0.1:9", runner.RunConfig("x", "kv"), rows, progress=False))


def test_429_and_503_are_retried_until_an_answer(answers):
    answers.script += [APIError(429, "rate_limited", "slow down"), APIError(503, "overloaded", "busy"), "a = 1"]
    [outcome] = _run()
    assert outcome.error is None and outcome.exact and outcome.completion_tokens == 3
    assert len(answers.calls) == 3 and len(answers.waits) == 2 and answers.waits[1] > answers.waits[0]


def test_other_errors_are_an_outcome_at_once(answers):
    answers.script += [APIError(422, "invalid_request", "bad text")]
    [outcome] = _run()
    assert outcome.finish_reason == "error" and "bad text" in outcome.error and not outcome.valid
    assert len(answers.calls) == 1 and answers.waits == []


def test_a_service_that_stays_full_gives_an_error_outcome_not_a_hang(answers):
    answers.script += [APIError(429, "rate_limited", "slow down")] * runner._TRIES
    [outcome] = _run()
    assert outcome.finish_reason == "error" and "slow down" in outcome.error
    assert len(answers.calls) == runner._TRIES and answers.script == []
