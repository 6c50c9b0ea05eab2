"""``POST /generate``: natural language in, DSL code out (JSON, or server-sent events with ``stream``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from service.api.deps import CallerDep, ServingDep
from service.api.generate.schemas import GenerateRequest, GenerateResponse
from service.api.generate.serving import last_event
from service.api.request_metrics import label_request
from service.api.schemas import error_responses
from service.errors import EngineUnavailable, NL2DSLError, error_body

__all__ = ["EventStream", "router"]

router = APIRouter(tags=["generate"])

# How often a non-streaming request checks that its client is still there.
_DISCONNECT_POLL_S = 0.25


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={
        **error_responses(400, 401, 403, 404, 409, 413, 422, 429, 503, 504),
        200: {
            "description": "The generated code; with `stream: true`, `text/event-stream` of `delta` events "
            "and a final `result` event carrying this object (or an `error` event).",
            "content": {"text/event-stream": {}},
        },
    },
)
async def generate(body: GenerateRequest, request: Request, response: Response, caller: CallerDep,
                   serving: ServingDep):
    """Generate DSL code for a request in natural language."""
    known = body.dsl if body.dsl in serving.grammars.names() else "unknown"
    label_request(request, dsl=known, adapter="unknown")
    serving.engine.ready()  # 503 at once while the engine loads or after it died
    job = await serving.start(caller, body, client_request_id=request.headers.get("x-request-id"))
    label_request(request, dsl=job.grammar.metric_label, adapter=job.adapter_name)
    headers = {"x-request-id": job.client_request_id or job.request_id}
    if body.stream:
        return EventStream(serving.run(job), release=job.release, headers=headers)
    try:
        result = await _until_disconnected(request, last_event(serving.run(job)))
    finally:
        job.release()
    response.headers.update(headers)
    return result


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
    """Server-sent events of one generation: ``delta`` per text piece, then ``result`` (or ``error``).

    However the response ends (finished, failed, or a client gone before or during the stream, which an
    ASGI 2.4 server reports by raising on ``send`` before the first event), the generation is closed (an
    unfinished engine request is aborted) and ``release`` is called.
    """

    def __init__(self, events: AsyncIterator[str | GenerateResponse], *, release: Callable[[], None],
                 headers: dict[str, str]) -> None:
        super().__init__(_sse(events), media_type="text/event-stream", headers=headers)
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


async def _sse(events: AsyncIterator[str | GenerateResponse]) -> AsyncIterator[str]:
    try:
        async for event in events:
            if isinstance(event, GenerateResponse):
                yield f"event: result\ndata: {event.model_dump_json()}\n\n"
            else:
                yield f"event: delta\ndata: {json.dumps({'text': event})}\n\n"
    except NL2DSLError as exc:  # the status line is already sent: report the error in the stream
        yield f"event: error\ndata: {json.dumps(error_body(exc.type, exc.message, exc.detail))}\n\n"
