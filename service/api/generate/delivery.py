"""How a generation reaches its client, whichever protocol asked: one JSON answer, or a stream of events.

Both ``POST /generate`` and the OpenAI-compatible routes (:mod:`service.api.openai`) turn their body into a
:class:`GenerateRequest`, :func:`admit` it and :func:`deliver` the job with their own rendering; the rest is shared:
the admission slot is released however the request ends, and a client that goes away (before the answer, or
in the middle of a stream) aborts its engine request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from service.api.generate.schemas import GenerateRequest, GenerateResponse
from service.api.generate.serving import GenerateServing, Job, last_event
from service.api.request_metrics import label_request
from service.errors import EngineUnavailable
from service.security import Caller

__all__ = ["EventStream", "Events", "admit", "deliver"]

#: A generation's events: text deltas, then the final response.
Events = AsyncIterator[str | GenerateResponse]

# How often a non-streaming request checks that its client is still there.
_DISCONNECT_POLL_S = 0.25


async def admit(request: Request, caller: Caller, serving: GenerateServing, body: GenerateRequest) -> Job:
    """Admit and prepare ``body`` (its 4xx raised here), the request labelled for the request counter."""
    known = body.dsl if body.dsl in serving.grammars.names() else "unknown"
    label_request(request, dsl=known, adapter="unknown")
    serving.engine.ready()  # 503 at once while the engine loads or after it died
    job = await serving.start(caller, body, client_request_id=request.headers.get("x-request-id"))
    label_request(request, dsl=job.grammar.metric_label, adapter=job.adapter_label)
    return job


async def deliver(request: Request, serving: GenerateServing, job: Job, *, stream: bool,
                  render: Callable[[GenerateResponse], Any], sse: Callable[[Events], AsyncIterator[str]]):
    """Run ``job``: as server-sent events written by ``sse``, or as the JSON ``render`` makes of the result."""
    headers = {"x-request-id": job.client_request_id or job.request_id}
    if stream:
        return EventStream(serving.run(job), sse, release=job.release, headers=headers)
    try:
        result = await _until_disconnected(request, last_event(serving.run(job)))
    finally:
        job.release()
    return JSONResponse(render(result), headers=headers)


async def _until_disconnected(request: Request, work: Coroutine[Any, Any, GenerateResponse]) -> GenerateResponse:
    """Await ``work``, cancelling it (and so the engine request) if the client goes away first.

    Cancelled from outside (uvicorn cancels what is left when the SIGTERM drain time is over), the client still
    gets an answer it can act on: 503, retry elsewhere.
    """
    task = asyncio.ensure_future(work)
    try:
        while True:
            try:
                done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            except asyncio.CancelledError:
                if (current := asyncio.current_task()) is not None:
                    current.uncancel()
                raise EngineUnavailable("the service is shutting down; retry the request",
                                        headers={"Retry-After": "1"}) from None
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise asyncio.CancelledError("client disconnected")
    finally:
        if not task.done():
            task.cancel()


class EventStream(StreamingResponse):
    """Server-sent events of one generation, written by ``sse`` from its events.

    However the response ends (finished, failed, or a client gone before or during the stream, which an
    ASGI 2.4 server reports by raising on ``send`` before the first event), the generation is closed (an
    unfinished engine request is aborted) and ``release`` is called.
    """

    def __init__(self, events: Events, sse: Callable[[Events], AsyncIterator[str]], *, release: Callable[[], None],
                 headers: dict[str, str]) -> None:
        super().__init__(sse(events), media_type="text/event-stream", headers=headers)
        self._events = events
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()
                await self._events.aclose()
            finally:
                self._release()
