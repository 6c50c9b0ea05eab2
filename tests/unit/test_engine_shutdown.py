"""The engine is shut down once: vLLM's ``AsyncLLM.__del__`` shuts down again, and at interpreter exit (the app
still holds the engine) vLLM's module globals are gone: a TypeError traceback ended every stop of the image."""

from __future__ import annotations

import asyncio

import service.engine.core as engine_module
from service.config import Settings


def test_the_engine_is_shut_down_once(monkeypatch):
    calls: list[float | None] = []

    class AsyncLLM:
        errored = False

        def shutdown(self, timeout=None):
            calls.append(timeout)

    llm = AsyncLLM()
    monkeypatch.setattr(engine_module, "_start_async_llm", lambda settings, model: llm)

    async def serve_and_stop():
        async with engine_module.open_engine(Settings(), model="/models/m") as engine:
            assert engine.llm is llm

    asyncio.run(serve_and_stop())
    assert calls == [None]
    llm.shutdown()  # what AsyncLLM.__del__ does when the object goes, at interpreter exit at the latest
    assert calls == [None]
