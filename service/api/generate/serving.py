"""The request path of ``POST /generate``, one step per call, top to bottom.

    prepare:  security (which tenant, may it use this DSL) -> grammars (which DSL) -> limits -> safety (request)
              -> adapters (which LoRA; may the tenant use it) -> retrieval (examples, catalog hints)
              -> prompts (chat template) -> token budget
    run:      engine (stream deltas, until the deadline) -> grammars (parse the code) -> safety (output)
              -> metrics + one log line; the admission ticket is released however it ends

``prepare`` raises the request's errors before anything is streamed, so even a streaming request gets
its 4xx as a normal JSON response.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from service import metrics
from service.adapters import BASE, Adapter
from service.api.deps import Services
from service.api.generate.schemas import GenerateRequest, GenerateResponse, Timings, Usage
from service.api.schemas import ParseErrorModel
from service.engine import GenerationParams
from service.errors import NL2DSLError, RequestInvalid
from service.grammars import Grammar
from service.limits import Ticket
from service.prompts import build_prompt
from service.retrieval import catalog_hints
from service.security import DEVELOPER, Principal

__all__ = ["Prepared", "prepare", "run"]

log = logging.getLogger("nl2dsl.requests")


@dataclass(frozen=True)
class Prepared:
    """A request checked and turned into what the engine needs."""

    request: GenerateRequest
    request_id: str
    tenant: str | None
    grammar: Grammar
    adapter: Adapter | None
    prompt_token_ids: list[int]
    params: GenerationParams
    timeout_s: float

    @property
    def adapter_name(self) -> str:
        return self.adapter.name if self.adapter else BASE


def prepare(services: Services, req: GenerateRequest, *, request_id: str, principal: Principal = DEVELOPER) -> Prepared:
    """Check the request against the caller's rights, the registries and limits, and build its prompt.

    Raises the request's 4xx.
    """
    settings = services.settings
    tenant = principal.tenant_for(req.tenant)
    principal.check_dsl(req.dsl)
    grammar = services.grammars.get(req.dsl, tenant=tenant)
    _check_limits(req, services)
    services.safety.check_request(req.text)
    adapter = services.adapters.resolve(dsl=grammar.name, tenant=tenant, adapter=req.adapter)
    principal.check_adapter(adapter)
    # The prompt shape an adapter was trained on wins over the service default, unless the request says.
    k = req.examples
    if k is None:
        trained = adapter.prompt_examples if adapter else None
        k = settings.default_examples if trained is None else trained
    examples = services.retriever.select(grammar.name, req.text, k=k, tenant=tenant)
    use_hints = adapter.prompt_catalog_hints if adapter else settings.catalog_hints
    hints = catalog_hints(grammar.catalog, req.text) if use_hints and grammar.catalog else ()
    prompt = build_prompt(services.tokenizer, grammar, req.text, context=req.context, examples=examples, hints=hints)
    ids = services.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    max_tokens = req.max_tokens or settings.default_max_tokens
    if len(ids) + max_tokens > settings.max_model_len:
        raise RequestInvalid(
            f"prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceeds the model's "
            f"{settings.max_model_len} tokens; shorten text, context or examples",
            detail={"prompt_tokens": len(ids), "max_tokens": max_tokens, "max_model_len": settings.max_model_len},
        )
    params = GenerationParams(
        max_tokens=max_tokens,
        temperature=req.temperature,
        seed=req.seed,
        grammar=grammar.engine_text if req.constrained else None,
    )
    timeout = req.timeout_s or settings.request_timeout_s
    return Prepared(req, request_id, tenant, grammar, adapter, ids, params, timeout)


async def run(services: Services, prepared: Prepared, ticket: Ticket) -> AsyncIterator[str | GenerateResponse]:
    """Yield text deltas as they come, then the final :class:`GenerateResponse`; release ``ticket`` at the end."""
    dsl, adapter = prepared.grammar.name, prepared.adapter_name
    started = time.perf_counter()
    deadline = time.monotonic() + prepared.timeout_s
    ttft: float | None = None
    parts: list[str] = []
    last = None
    status = "error"
    metrics.IN_FLIGHT.inc()
    metrics.QUEUED.inc()
    try:
        engine = services.ready_engine()
        async for delta in engine.generate(
            prepared.prompt_token_ids,
            request_id=prepared.request_id,
            adapter=prepared.adapter.ref if prepared.adapter else None,
            params=prepared.params,
            deadline=deadline,
        ):
            if ttft is None and delta.completion_tokens:
                ttft = time.perf_counter() - started
                metrics.QUEUED.dec()
            if delta.text:
                parts.append(delta.text)
                yield delta.text
            last = delta
        code = "".join(parts)
        parsed = prepared.grammar.parse(code)
        if parsed.valid:
            status = "blocked"
            services.safety.check_output(parsed.tree, dsl=dsl, tenant=prepared.tenant)
        finish_reason = last.finish_reason if last else "abort"
        response = GenerateResponse(
            request_id=prepared.request_id,
            code=code,
            valid=parsed.valid,
            dsl=dsl,
            adapter=adapter,
            finish_reason=finish_reason,
            error=ParseErrorModel(**vars(parsed.error)) if parsed.error else None,
            usage=Usage(
                prompt_tokens=len(prepared.prompt_token_ids),
                completion_tokens=last.completion_tokens if last else 0,
            ),
            timings=Timings(queue=last.queue_s if last else None, ttft=ttft, total=time.perf_counter() - started),
        )
        status = "ok" if parsed.valid else "invalid"
        _observe(response, dsl_label=prepared.grammar.metric_label)
        yield response
    except NL2DSLError as exc:
        status = "blocked" if status == "blocked" else exc.type
        raise
    except BaseException:
        status = "aborted"
        raise
    finally:
        ticket.release()
        metrics.IN_FLIGHT.dec()
        if ttft is None:
            metrics.QUEUED.dec()
        total = time.perf_counter() - started
        metrics.REQUEST_DURATION.labels(prepared.grammar.metric_label, adapter, status).observe(total)
        log.info(
            json.dumps(
                {
                    "request_id": prepared.request_id,
                    "tenant": prepared.tenant,
                    "dsl": dsl,
                    "adapter": adapter,
                    "status": status,
                    "prompt_tokens": len(prepared.prompt_token_ids),
                    "completion_tokens": last.completion_tokens if last else 0,
                    "ttft_s": round(ttft, 4) if ttft is not None else None,
                    "total_s": round(total, 4),
                }
            )
        )


def _check_limits(req: GenerateRequest, services: Services) -> None:
    settings = services.settings
    problems = []
    if not req.text.strip():
        problems.append(("text", "text is empty"))
    if len(req.text) > settings.max_text_chars:
        problems.append(("text", f"text has {len(req.text)} characters; the limit is {settings.max_text_chars}"))
    if req.context and len(req.context) > settings.max_context_chars:
        problems.append(("context", f"context is longer than {settings.max_context_chars} characters"))
    if req.max_tokens is not None and req.max_tokens > settings.max_tokens_limit:
        problems.append(("max_tokens", f"max_tokens must be at most {settings.max_tokens_limit}"))
    if req.timeout_s is not None and req.timeout_s > settings.request_timeout_s:
        problems.append(("timeout_s", f"timeout_s must be at most {settings.request_timeout_s:g}"))
    if req.examples is not None and req.examples > settings.max_examples:
        problems.append(("examples", f"examples must be at most {settings.max_examples}"))
    if problems:
        raise RequestInvalid(
            "; ".join(message for _, message in problems),
            detail=[{"field": field, "message": message} for field, message in problems],
        )


def _observe(response: GenerateResponse, *, dsl_label: str) -> None:
    dsl, adapter = dsl_label, response.adapter
    metrics.PROMPT_TOKENS.labels(dsl, adapter).inc(response.usage.prompt_tokens)
    metrics.COMPLETION_TOKENS.labels(dsl, adapter).inc(response.usage.completion_tokens)
    if response.timings.ttft is not None:
        metrics.TIME_TO_FIRST_TOKEN.labels(dsl, adapter).observe(response.timings.ttft)
    decoded = response.usage.completion_tokens - 1
    if response.timings.ttft is not None and decoded > 0:
        per_token = (response.timings.total - response.timings.ttft) / decoded
        metrics.TIME_PER_OUTPUT_TOKEN.labels(dsl, adapter).observe(per_token)
    if response.timings.queue is not None:
        metrics.QUEUE_WAIT.labels(dsl, adapter).observe(response.timings.queue)
    if not response.valid:
        cause = "length" if response.finish_reason == "length" else "grammar"
        metrics.INVALID_OUTPUTS.labels(dsl, cause).inc()
