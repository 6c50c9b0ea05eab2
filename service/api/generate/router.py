"""``POST /generate``: natural language in, DSL code out (JSON, or server-sent events with ``stream``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request

from service.api.deps import CallerDep, ServingDep
from service.api.generate.delivery import Events, admit, deliver
from service.api.generate.schemas import GenerateRequest, GenerateResponse
from service.api.schemas import error_responses
from service.errors import NL2DSLError, error_body

__all__ = ["router"]

router = APIRouter(tags=["generate"])


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
async def generate(body: GenerateRequest, request: Request, caller: CallerDep, serving: ServingDep):
    """Generate DSL code for a request in natural language."""
    job = await admit(request, caller, serving, body)
    return await deliver(request, serving, job, stream=body.stream, render=lambda r: r.model_dump(mode="json"),
                         sse=_sse)


async def _sse(events: Events) -> AsyncIterator[str]:
    try:
        async for event in events:
            if isinstance(event, GenerateResponse):
                yield f"event: result\ndata: {event.model_dump_json()}\n\n"
            else:
                yield f"event: delta\ndata: {json.dumps({'text': event})}\n\n"
    except NL2DSLError as exc:  # the status line is already sent: report the error in the stream
        error = error_body(exc.type, exc.message, exc.detail, status=exc.status_code)
        yield f"event: error\ndata: {json.dumps(error)}\n\n"
