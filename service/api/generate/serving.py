"""The request path of ``POST /generate``, one step per call, top to bottom.

    start:  limits     field ranges (422), then admission: a queue slot and the tenant's cap (429 costs nothing)
            safety     the request text and its context
            grammars   the caller's DSL (its key may be limited to some)
            adapters   which LoRA, by the one access rule
            retrieval  k similar examples of this DSL, the tenant's first          (worker thread)
            prompts    chat template -> token ids, within the model's length       (worker thread)
            grammars   the request's own grammar, if it sends one                  (sandbox)
    run:    limits     the tenant's fair share of the engine (waits while over it and others wait)
            engine     stream deltas until the deadline; the engine request id is made here, unique
                       (``candidates``: n generations at once, each in the tenant's share)
            grammars   parse the code, bounded in time                            (thread or sandbox)
            safety     the tenant's policy on the code
            candidates the one whose meaning most share; its confidence              (worker thread)
            metrics    histograms, counters and one log line

The caller comes resolved from its API key (:mod:`service.api.auth`). ``start`` raises the request's errors
before anything is streamed, so even a streaming request gets its 4xx as a plain JSON response; it returns
a :class:`Job` holding the admission ticket, which the router releases however the request ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from service import metrics
from service.adapters import BASE, Adapter, AdapterRegistry, AdapterResidency
from service.api.generate.candidates import Sample, Vote, vote
from service.api.generate.schemas import Candidate, GenerateRequest, GenerateResponse, Timings, Usage
from service.api.schemas import ParseErrorModel
from service.config import Settings
from service.engine import Delta, EngineSlot, GenerationParams
from service.errors import AdapterUnavailable, NL2DSLError, ParseLimit, RateLimited, RequestInvalid
from service.evaluation.confidence import Calibration, raw_confidence
from service.grammars import Grammar, GrammarRegistry, ParseError, ParseResult
from service.grammars.uploads import grammar_size_problem
from service.limits import Admission, Ticket
from service.prompts import prompt_token_ids
from service.retrieval import Retriever, catalog_hints
from service.safety import SafetyChecker
from service.security import Caller

__all__ = ["GenerateServing", "Job", "last_event"]

log = logging.getLogger("nl2dsl.requests")

# A client's X-Request-Id is echoed and logged, never used: kept only if it is short and printable.
_CLIENT_ID = re.compile(r"^[\x21-\x7e]{1,128}$")


@dataclass(frozen=True)
class Job:
    """A request admitted, checked and turned into what the engine needs."""

    request: GenerateRequest
    #: Made by the server, unique: the engine's request id (vLLM aborts every request sharing an id).
    request_id: str
    client_request_id: str | None
    tenant: str | None
    grammar: Grammar
    adapter: Adapter | None
    prompt_token_ids: list[int]
    params: GenerationParams
    timeout_s: float
    ticket: Ticket
    #: Seconds this request waited for its adapter's files to come from the store (None: they were here).
    fetch_s: float | None = None
    #: Generations to choose the answer from (the request's, or its adapter's default).
    candidates: int = 1

    @property
    def adapter_name(self) -> str:
        return self.adapter.name if self.adapter else BASE

    @property
    def adapter_label(self) -> str:
        """The ``adapter`` label in metrics (bounded, and the same for every owner's adapters)."""
        return self.adapter.metric_label if self.adapter else BASE

    def release(self) -> None:
        """Give the admission slot back (idempotent)."""
        self.ticket.release()


class GenerateServing:
    """Everything ``POST /generate`` needs, built once at start-up."""

    def __init__(self, *, settings: Settings, grammars: GrammarRegistry, adapters: AdapterRegistry,
                 retriever: Retriever, tokenizer: Any, safety: SafetyChecker, admission: Admission,
                 engine: EngineSlot, residency: AdapterResidency | None = None) -> None:
        self.settings = settings
        self.grammars = grammars
        self.adapters = adapters
        self.retriever = retriever
        self.tokenizer = tokenizer
        self.safety = safety
        self.admission = admission
        self.engine = engine
        #: Fetches a published adapter's files on first use (None: a service without a store, as in tools).
        self.residency = residency

    async def start(self, caller: Caller, req: GenerateRequest, *, client_request_id: str | None = None) -> Job:
        """Admit the request and prepare it; raises its 4xx."""
        tenant = caller.tenant_for(req.tenant)
        _check_ranges(req, self.settings)
        ticket = self.admission.admit(tenant)
        try:
            return await self._prepare(caller, tenant, req, ticket, client_request_id)
        except BaseException:
            ticket.release()
            raise

    async def _prepare(self, caller: Caller, tenant: str | None, req: GenerateRequest, ticket: Ticket,
                       client_request_id: str | None) -> Job:
        settings = self.settings
        self.safety.check_request(req.text, req.context)
        caller.check_dsl(req.dsl)
        grammar = await self.grammars.resolve(req.dsl, tenant=tenant)
        adapter = self.adapters.resolve(caller, dsl=grammar.name, tenant=tenant, name=req.adapter)
        # The prompt shape an adapter was trained on wins over the service default, unless the request says.
        k = req.examples
        if k is None:
            trained = adapter.prompt_examples if adapter else None
            k = settings.default_examples if trained is None else trained
        examples = await asyncio.to_thread(self.retriever.select, grammar, req.text, k=k, tenant=tenant)
        use_hints = adapter.prompt_catalog_hints if adapter else settings.catalog_hints
        hints = catalog_hints(grammar.catalog, req.text) if use_hints and grammar.catalog else ()
        ids = await asyncio.to_thread(prompt_token_ids, self.tokenizer, grammar, req.text, context=req.context,
                                      examples=examples, hints=hints)
        max_tokens = req.max_tokens or settings.default_max_tokens
        if len(ids) + max_tokens > settings.max_model_len:
            raise RequestInvalid(
                f"prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceeds the model's "
                f"{settings.max_model_len} tokens; shorten text, context or examples",
                detail={"prompt_tokens": len(ids), "max_tokens": max_tokens, "max_model_len": settings.max_model_len},
            )
        if req.grammar is not None:
            grammar = await self.grammars.one_off(grammar, req.grammar, owner=tenant)
        params = GenerationParams(max_tokens=max_tokens, temperature=req.temperature, seed=req.seed,
                                  grammar=grammar.engine_text if req.constrained else None)
        client_id = client_request_id if client_request_id and _CLIENT_ID.match(client_request_id) else None
        fetch_s = None
        if adapter is not None and self.residency is not None:  # its files, held until the request ends
            fetch_s = await self.residency.ensure(adapter)
            ticket.on_release.append(functools.partial(self.residency.release, adapter))
        candidates = req.candidates or (adapter.candidates if adapter is not None and not req.stream else 1)
        return Job(req, uuid.uuid4().hex, client_id, tenant, grammar, adapter, ids, params,
                   req.timeout_s or settings.request_timeout_s, ticket, fetch_s, candidates)

    async def run(self, job: Job) -> AsyncIterator[str | GenerateResponse]:
        """Yield text deltas as they come, then the final :class:`GenerateResponse` (with ``candidates``: only
        the response, once every candidate has finished).

        Closing the iterator early aborts the engine requests. The admission ticket is the caller's to release.
        """
        dsl, adapter, adapter_label = job.grammar.name, job.adapter_name, job.adapter_label
        started = time.perf_counter()
        progress = _Progress(started)
        generated: list[_Generated] = []
        status = "error"
        metrics.IN_FLIGHT.inc()
        metrics.QUEUED.inc()
        deadline = time.monotonic() + job.timeout_s
        try:
            n = job.candidates
            if n == 1:
                async for piece in self._sample(job, job.params, job.request_id, deadline, progress):
                    if isinstance(piece, str):
                        yield piece
                    else:
                        generated.append(piece)
            else:
                generated = list(await asyncio.gather(*(
                    self._collect(job, self._candidate_params(job, i), f"{job.request_id}-{i}", deadline, progress)
                    for i in range(n))))
            parsed = await asyncio.gather(*(self._parse(job, g.code) for g in generated))
            samples = [Sample(g.code, p, g.logprob, g.completion_tokens, g.finish_reason)
                       for g, p in zip(generated, parsed, strict=True)]
            status = "blocked"
            allowed = self._allowed(samples, tenant=job.tenant)
            chosen = await asyncio.to_thread(vote, allowed, job.grammar) if len(allowed) > 1 else Vote(0, (1,))
            winner = allowed[chosen.winner]
            calibration = Calibration.of(job.adapter.manifest.get("confidence")) if job.adapter else None
            raw = raw_confidence(winner.mean_logprob, valid=winner.parsed.valid,
                                 votes=chosen.votes[chosen.winner], candidates=n)
            response = GenerateResponse(
                request_id=job.request_id,
                code=winner.code,
                valid=winner.parsed.valid,
                dsl=dsl,
                adapter=adapter,
                finish_reason=winner.finish_reason,
                error=ParseErrorModel(**vars(winner.parsed.error)) if winner.parsed.error else None,
                usage=Usage(prompt_tokens=len(job.prompt_token_ids),
                            completion_tokens=sum(g.completion_tokens for g in generated),
                            cached_tokens=generated[0].cached_tokens),
                timings=Timings(fetch=job.fetch_s, queue=generated[0].queue_s, ttft=progress.ttft,
                                total=time.perf_counter() - started),
                confidence=calibration(raw) if calibration and winner.parsed.valid else raw,
                calibrated=calibration is not None,
                candidates=[Candidate(code=s.code, valid=s.parsed.valid, votes=chosen.votes[i],
                                      mean_logprob=s.mean_logprob, finish_reason=s.finish_reason)
                            for i, s in enumerate(allowed)] if job.request.return_candidates else None,
            )
            status = "ok" if winner.parsed.valid else "invalid"
            _observe(response, dsl_label=job.grammar.metric_label, adapter_label=adapter_label)
            yield response
        except AdapterUnavailable as exc:  # the engine refused the adapter, or it made non-finite numbers: never
            if job.adapter is not None:  # hand this version to the engine again
                reason = exc.detail.get("reason") if isinstance(exc.detail, dict) else None
                self.adapters.quarantine(job.adapter, reason or "the engine could not load it on this replica")
            status = exc.type
            raise
        except NL2DSLError as exc:
            status = "blocked" if status == "blocked" else exc.type
            raise
        except BaseException:
            status = "aborted"
            raise
        finally:
            metrics.IN_FLIGHT.dec()
            if progress.ttft is None:
                metrics.QUEUED.dec()
            total = time.perf_counter() - started
            metrics.REQUEST_DURATION.labels(job.grammar.metric_label, adapter_label, status).observe(total)
            log.info(json.dumps({
                "request_id": job.request_id,
                "client_request_id": job.client_request_id,
                "tenant": job.tenant,
                "dsl": dsl,
                "adapter": adapter,
                "status": status,
                "prompt_tokens": len(job.prompt_token_ids),
                "completion_tokens": sum(g.completion_tokens for g in generated),
                "candidates": job.candidates,
                "ttft_s": round(progress.ttft, 4) if progress.ttft is not None else None,
                "total_s": round(total, 4),
            }))

    async def _sample(self, job: Job, params: GenerationParams, request_id: str, deadline: float,
                      progress: _Progress) -> AsyncIterator[str | _Generated]:
        """One generation within the tenant's fair share of the engine: its text deltas, then what it made."""
        parts: list[str] = []
        last: Delta | None = None
        logprob = 0.0
        async with self.admission.fair_share.slot(job.tenant, deadline=deadline):  # its share of the engine
            async for delta in self.engine.ready().generate(
                job.prompt_token_ids,
                request_id=request_id,
                tenant=job.tenant,
                adapter=job.adapter.ref(job.grammar.name) if job.adapter else None,
                params=params,
                deadline=deadline,
            ):
                if delta.completion_tokens:
                    progress.first_token()
                logprob += delta.logprob
                if delta.text:
                    parts.append(delta.text)
                    yield delta.text
                last = delta
        yield _Generated("".join(parts), last.finish_reason or "stop" if last else "abort",
                         last.completion_tokens if last else 0, last.cached_tokens if last else 0,
                         last.queue_s if last else None, logprob)

    async def _collect(self, job: Job, params: GenerationParams, request_id: str, deadline: float,
                       progress: _Progress) -> _Generated:
        """:meth:`_sample` run to its end (a candidate: its deltas are not streamed)."""
        result = None
        async with contextlib.aclosing(self._sample(job, params, request_id, deadline, progress)) as pieces:
            async for piece in pieces:
                result = piece
        assert isinstance(result, _Generated)
        return result

    def _candidate_params(self, job: Job, index: int) -> GenerationParams:
        """Candidate ``index``'s sampling: the request's temperature, or greedy first and then
        ``candidate_temperature``; seeds one apart when the request sets one."""
        temperature = job.params.temperature or (0.0 if index == 0 else self.settings.candidate_temperature)
        seed = job.params.seed + index if job.params.seed is not None else None
        return replace(job.params, temperature=temperature, seed=seed)

    def _allowed(self, samples: list[Sample], *, tenant: str | None) -> list[Sample]:
        """The samples the tenant's policy allows (one request's: its refusal raised; of several, the refused
        left out, and the first refusal raised when none is left)."""
        allowed, refusal = [], None
        for sample in samples:
            try:
                self.safety.check_output(sample.code, sample.parsed.tree, tenant=tenant)
            except NL2DSLError as exc:
                refusal = refusal or exc
                continue
            allowed.append(sample)
        if not allowed:
            assert refusal is not None
            raise refusal
        return allowed

    async def _parse(self, job: Job, code: str) -> ParseResult:
        """The parse of the generated code; one that cannot finish within its bounds is invalid, saying why."""
        try:
            return await self.grammars.parse(job.grammar, code, owner=job.tenant)
        except (ParseLimit, RateLimited) as exc:
            return ParseResult(valid=False, error=ParseError(f"not checked: {exc.message}"))


async def last_event(events: AsyncIterator[str | GenerateResponse]) -> GenerateResponse:
    """Run ``events`` to the end (closing it however that goes) and return the final response."""
    result = None
    async with contextlib.aclosing(events):
        async for event in events:
            result = event
    assert isinstance(result, GenerateResponse)
    return result


@dataclass(frozen=True)
class _Generated:
    """What one generation made: its code and the engine's account of it."""

    code: str
    finish_reason: str
    completion_tokens: int
    cached_tokens: int
    queue_s: float | None
    logprob: float


class _Progress:
    """When a request's first token came (of any of its candidates); counted once in the queue gauge."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.ttft: float | None = None

    def first_token(self) -> None:
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.started
            metrics.QUEUED.dec()


def _check_ranges(req: GenerateRequest, settings: Settings) -> None:
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
    if req.grammar is not None and (problem := grammar_size_problem(req.grammar, settings)):
        problems.append(("grammar", problem))
    if req.examples is not None and req.examples > settings.max_examples:
        problems.append(("examples", f"examples must be at most {settings.max_examples}"))
    if req.candidates is not None and req.candidates > settings.max_candidates:
        problems.append(("candidates", f"candidates must be at most {settings.max_candidates}"))
    if req.candidates is not None and req.candidates > 1 and req.stream:
        problems.append(("candidates", "candidates are chosen once all are generated: not with stream"))
    if problems:
        raise RequestInvalid(
            "; ".join(message for _, message in problems),
            detail=[{"field": field, "message": message} for field, message in problems],
        )


def _observe(response: GenerateResponse, *, dsl_label: str, adapter_label: str) -> None:
    dsl, adapter = dsl_label, adapter_label
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
    metrics.ANSWER_CONFIDENCE.labels(dsl, adapter).observe(response.confidence)
    if not response.valid:
        cause = "length" if response.finish_reason == "length" else "grammar"
        metrics.INVALID_OUTPUTS.labels(dsl, cause).inc()
