"""``POST /generate``: natural language in, DSL code out (JSON, or server-sent events with ``stream``)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from service.api.deps import PrincipalDep, ServicesDep
from service.api.generate.schemas import GenerateRequest, GenerateResponse
from service.api.generate.serving import prepare, run
from service.api.request_metrics import label_request
from service.api.schemas import ERROR_RESPONSES
from service.errors import NL2DSLError, error_body

__all__ = ["router"]

router = APIRouter(tags=["generate"])

# How often a non-streaming request checks that its client is still there.
_DISCONNECT_POLL_S = 0.25


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={
        **ERROR_RESPONSES,
        200: {
            "description": "The generated code; with `stream: true`, `text/event-stream` of `delta` events "
            "and a final `result` event carrying this object.",
            "content": {"text/event-stream": {}},
        },
    },
)
async def generate(body: GenerateRequest, request: Request, services: ServicesDep, principal: PrincipalDep):
    """Generate DSL code for a request in natural language."""
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    label_request(request, dsl=body.dsl if body.dsl in services.grammars.names() else "unknown", adapter="unknown")
    services.ready_engine()
    prepared = prepare(services, body, request_id=request_id, principal=principal)
    label_request(request, dsl=prepared.grammar.metric_label, adapter=prepared.adapter_name)
    ticket = services.admission.admit(prepared.tenant)
    events = run(services, prepared, ticket)
    if body.stream:
        return StreamingResponse(_sse(events), media_type="text/event-stream", headers={"x-request-id": request_id})
    return await _until_disconnected(request, _last(events))


async def _last(events: AsyncIterator[str | GenerateResponse]) -> GenerateResponse:
    result = None
    async for event in events:
        result = event
    assert isinstance(result, GenerateResponse)
    return result


async def _until_disconnected(request: Request, work) -> GenerateResponse:
    """Await ``work``, cancelling it (and so the engine request) if the client goes away first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise asyncio.CancelledError("client disconnected")
    finally:
        if not task.done():
            task.cancel()


async def _sse(events: AsyncIterator[str | GenerateResponse]) -> AsyncIterator[str]:
    """Server-sent events: ``delta`` per text piece, then ``result`` (or ``error``)."""
    try:
        async for event in events:
            if isinstance(event, GenerateResponse):
                yield f"event: result\ndata: {event.model_dump_json()}\n\n"
            else:
                yield f"event: delta\ndata: {json.dumps({'text': event})}\n\n"
    except NL2DSLError as exc:  # the status line is already sent: report the error in the stream
        yield f"event: error\ndata: {json.dumps(error_body(exc.type, exc.message, exc.detail))}\n\n"
