"""``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions``: the OpenAI protocol on the /generate path.

The same key, limits, safety checks, grammar, adapter rule, retrieval, engine and metrics as ``POST /generate``
(:mod:`service.api.generate.delivery`): a body is turned into a ``GenerateRequest`` and goes the same way.
"""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request

from service.adapters import Adapter
from service.api.deps import AdaptersDep, CallerDep, GrammarsDep, ServingDep
from service.api.generate.delivery import admit, deliver
from service.api.openai.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from service.api.openai.serving import Kind, named_as_openai, render, sse, to_generate_request
from service.api.schemas import error_responses
from service.errors import NotFound, RequestInvalid
from service.names import client_name

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["openai"])

_ANSWERS = error_responses(400, 401, 403, 404, 409, 413, 422, 429, 503, 504)


def _answer_doc(model: type) -> dict:
    return {"model": model, "description": "The answer; with `stream: true`, `text/event-stream` of OpenAI chunks "
            "and `data: [DONE]`.", "content": {"text/event-stream": {}}}


@router.get("/models", response_model=ModelList, responses=error_responses(401, 413))
async def list_models(grammars: GrammarsDep, adapters: AdaptersDep, caller: CallerDep) -> ModelList:
    """What the caller may use as ``model``: each DSL, and each DSL with each adapter that serves it."""
    usable = [a for a in adapters.usable(caller) if a.error is None]
    cards: dict[str, ModelCard] = {}
    for dsl, owner in grammars.usable_names(caller):  # a published DSL not compiled here yet is listed as it is
        cards[dsl] = ModelCard(id=dsl, owned_by=owner or "shared")
        for adapter in usable:
            if adapter.dsl in (None, dsl):
                name = client_name(dsl, adapter.name)
                cards.setdefault(name, ModelCard(id=name, owned_by=_owner(adapter), parent=dsl))
    return ModelList(data=list(cards.values()))


@router.get("/models/{model}", response_model=ModelCard, responses=error_responses(401, 404, 413))
async def get_model(model: str, grammars: GrammarsDep, adapters: AdaptersDep, caller: CallerDep) -> ModelCard:
    """One entry of ``GET /v1/models``."""
    found = next((card for card in (await list_models(grammars, adapters, caller)).data if card.id == model), None)
    if found is None:
        raise NotFound(f"no model {model!r} for this key; GET /v1/models lists them", detail={"field": "model"})
    return found


@router.post("/completions", responses={**_ANSWERS, 200: _answer_doc(Completion)})
async def create_completion(body: CompletionRequest, request: Request, caller: CallerDep, serving: ServingDep):
    """DSL code for ``prompt``, as an OpenAI text completion."""
    return await _answer(body, "completion", request, caller, serving)


@router.post("/chat/completions", responses={**_ANSWERS, 200: _answer_doc(ChatCompletion)})
async def create_chat_completion(body: ChatCompletionRequest, request: Request, caller: CallerDep,
                                 serving: ServingDep):
    """DSL code for the last user message, as an OpenAI chat completion."""
    return await _answer(body, "chat", request, caller, serving)


async def _answer(body: CompletionRequest | ChatCompletionRequest, kind: Kind, request: Request, caller: CallerDep,
                  serving: ServingDep):
    try:
        job = await admit(request, caller, serving, to_generate_request(body))
    except RequestInvalid as exc:
        raise named_as_openai(exc) from None
    return await deliver(request, serving, job, stream=body.stream, render=partial(render, body=body, kind=kind),
                         sse=partial(sse, body=body, kind=kind, request_id=job.request_id))


def _owner(adapter: Adapter) -> str:
    if adapter.owner:
        return adapter.owner
    return "shared" if adapter.shared else ",".join(adapter.tenants)
