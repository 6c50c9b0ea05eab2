"""A cancellation always lands: a client that leaves stops its generation, and shutdown stops what the app runs
in the background. Python 3.11's ``asyncio.wait_for`` returned the awaited result instead whenever the
cancellation met it, and the cancelled task ran on."""

from __future__ import annotations

import asyncio
import random
import time

from service.app import _cancel
from service.engine.core import _until


def test_a_cancelled_generation_stops_whenever_the_cancellation_comes():
    async def tokens():
        while True:  # a generation that only a cancellation ends, its next token always ready at once
            await asyncio.to_thread(lambda: None)
            yield "token"

    async def consume():
        async for _ in _until(tokens(), deadline=time.monotonic() + 600):
            pass

    async def main() -> list[bool] | str:
        pace = random.Random(0)
        outcomes = []
        for _ in range(30):
            task = asyncio.create_task(consume())
            await asyncio.sleep(pace.uniform(0, 0.01))
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=10)
            if task not in done:
                await _cancel(task)
                return "ran on"
            outcomes.append(task.cancelled())
        return outcomes

    assert asyncio.run(main()) == [True] * 30


def test_shutdown_ends_a_background_task_that_swallowed_a_cancellation():
    steps = []

    async def swallows_once():
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            steps.append("swallowed")  # what a library's wait_for can do
        await asyncio.sleep(600)

    async def main():
        task = asyncio.create_task(swallows_once())
        await asyncio.sleep(0)
        async with asyncio.timeout(30) as bound:
            await _cancel(task)
        return task.cancelled(), bound.expired()

    assert asyncio.run(main()) == (True, False) and steps == ["swallowed"]
