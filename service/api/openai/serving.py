"""OpenAI requests onto the /generate path, and its results back into OpenAI's answers and stream chunks.

A completion's ``choices[0].text`` (a chat completion's ``message.content``) is the DSL code; ``usage`` and
``finish_reason`` are as OpenAI clients expect; ``nl2dsl`` carries what OpenAI's shape has no field for (does
the code parse, where it stops, nl2dsl's request id and timings). A stream is OpenAI's: ``data:`` chunks, the
last with ``finish_reason`` and ``nl2dsl``, a usage chunk if ``stream_options.include_usage``, then
``data: [DONE]``; an error after the stream began is a ``data: {"error": ...}`` chunk.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import ValidationError

from service.api.generate.delivery import Events
from service.api.generate.schemas import GenerateRequest, GenerateResponse
from service.api.openai.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Nl2dslExtra,
    OpenAIRequest,
    choices_of,
    usage_of,
)
from service.errors import NL2DSLError, RequestInvalid, error_body

__all__ = ["Kind", "named_as_openai", "render", "sse", "to_generate_request"]

Kind = Literal["completion", "chat"]

_OBJECT = {"completion": "text_completion", "chat": "chat.completion"}
#: /generate's field names, as the OpenAI body calls them.
_FIELDS = {"text": "prompt", "dsl": "model", "adapter": "model", "candidates": "n"}


def to_generate_request(body: CompletionRequest | ChatCompletionRequest) -> GenerateRequest:
    """The same request as ``POST /generate`` would take it (its own validation applies)."""
    dsl, adapter = body.dsl_and_adapter
    try:
        return GenerateRequest(
            dsl=dsl, adapter=adapter, text=body.text, context=body.context, tenant=body.tenant,
            max_tokens=body.max_completion_tokens or body.max_tokens, temperature=body.temperature or 0.0,
            seed=body.seed, examples=body.examples, constrained=body.constrained, stream=body.stream,
            timeout_s=body.timeout_s, grammar=body.grammar, candidates=body.n if body.n > 1 else None,
            return_candidates=body.n > 1,
        )
    except ValidationError as exc:
        fields = [{"field": _FIELDS.get(str(err["loc"][0]), str(err["loc"][0])), "message": err["msg"]}
                  for err in exc.errors()]
        raise RequestInvalid("; ".join(f"{f['field']}: {f['message']}" for f in fields), detail=fields) from None


def named_as_openai(exc: RequestInvalid) -> RequestInvalid:
    """``exc`` (from /generate's checks) with its fields named as the OpenAI body names them."""
    if not isinstance(exc.detail, list):
        return exc
    fields = [{**item, "field": _FIELDS.get(item.get("field"), item.get("field"))} if isinstance(item, dict) else item
              for item in exc.detail]
    message = exc.message
    for ours, theirs in _FIELDS.items():
        message = message.replace(f"{ours} must", f"{theirs} must").replace(f"{ours} are", f"{theirs} values are")
    return RequestInvalid(message, detail=fields)


def render(result: GenerateResponse, *, body: OpenAIRequest, kind: Kind) -> dict[str, Any]:
    """The whole answer: :class:`Completion` or :class:`ChatCompletion`, as JSON."""
    head = _head(result.request_id, body, kind, chunk=False)
    usage, extra = usage_of(result), Nl2dslExtra.of(result)
    codes, candidates = choices_of(result)
    reasons = [c.finish_reason for c in candidates] or [result.finish_reason]
    if kind == "completion":
        choices = [CompletionChoice(index=i, text=code, finish_reason=reason)
                   for i, (code, reason) in enumerate(zip(codes, reasons, strict=True))]
        answer: Completion | ChatCompletion = Completion(**head, choices=choices, usage=usage, nl2dsl=extra)
    else:
        messages = [ChatChoice(index=i, message=AssistantMessage(content=code), finish_reason=reason)
                    for i, (code, reason) in enumerate(zip(codes, reasons, strict=True))]
        answer = ChatCompletion(**head, choices=messages, usage=usage, nl2dsl=extra)
    return answer.model_dump(mode="json")


async def sse(events: Events, *, body: OpenAIRequest, kind: Kind, request_id: str) -> AsyncIterator[str]:
    """OpenAI's stream of one generation."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    head = _head(request_id, body, kind, chunk=True)
    usage_field = {"usage": None} if include_usage else {}
    first = True
    try:
        async for event in events:
            if isinstance(event, GenerateResponse):
                last = {**head, "choices": [_choice(kind, "", event.finish_reason)], **usage_field,
                        "nl2dsl": Nl2dslExtra.of(event).model_dump(mode="json")}
                yield _data(last)
                if include_usage:
                    yield _data({**head, "choices": [], "usage": usage_of(event).model_dump()})
            else:
                piece = _choice(kind, event, None, role=first)
                first = False
                yield _data({**head, "choices": [piece], **usage_field})
    except NL2DSLError as exc:  # the status line is already sent: the error goes in the stream
        yield _data(error_body(exc.type, exc.message, exc.detail, status=exc.status_code))
    yield "data: [DONE]\n\n"


def _head(request_id: str, body: OpenAIRequest, kind: Kind, *, chunk: bool) -> dict[str, Any]:
    prefix = "cmpl" if kind == "completion" else "chatcmpl"
    obj = "chat.completion.chunk" if chunk and kind == "chat" else _OBJECT[kind]
    return {"id": f"{prefix}-{request_id}", "object": obj, "created": int(time.time()), "model": body.model}


def _choice(kind: Kind, text: str, finish_reason: str | None, *, role: bool = False) -> dict[str, Any]:
    """One choice of a stream chunk."""
    if kind == "completion":
        return {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
    delta = {**({"role": "assistant"} if role else {}), **({"content": text} if text else {})}
    return {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}


def _data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
