"""The FastAPI application: ``create_app(settings)``; nothing happens at import time.

The lifespan loads the grammars (a broken grammar stops start-up), the tokenizer and the adapter registry,
then starts the engine in the background: ``/healthz`` answers at once, ``/readyz`` once the model is
loaded (tens of seconds on CPU, minutes for Mistral-7B), and the engine is always shut down on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from service import grammar_sandbox
from service.adapters import AdapterRegistry
from service.api import adapters, dsls, health, playground, validate
from service.api.deps import Services
from service.api.errors import install_error_handlers
from service.api.generate import router as generate
from service.api.json_body import FormAsJSONMiddleware
from service.api.request_metrics import GenerateMetricsMiddleware
from service.config import Settings
from service.engine import Engine, GenerationParams, open_engine
from service.errors import NL2DSLError
from service.grammars import GrammarRegistry
from service.limits import Admission
from service.model import base_fingerprint, resolve_model
from service.prompts import build_prompt
from service.retrieval import Retriever
from service.safety import SafetyChecker
from service.security import KeyStore

__all__ = ["create_app"]

log = logging.getLogger("nl2dsl")


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """Build the app. ``engine`` replaces the real one (unit tests pass a fake)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = services = _build_services(settings)
        async with AsyncExitStack() as stack:
            stack.callback(grammar_sandbox.shutdown)  # the worker that compiles uploaded grammars, if started
            if engine is not None:
                services.engine = engine
            else:
                loading = asyncio.create_task(_start_engine(services, stack))
                stack.push_async_callback(_cancel, loading)
            yield

    app = FastAPI(
        title="nl2dsl",
        version="0.1.0",
        summary="Natural language to DSL code: multi-LoRA, grammar-constrained generation on vLLM.",
        lifespan=lifespan,
        strict_content_type=False,  # a body without content-type is read as JSON
    )
    app.add_middleware(FormAsJSONMiddleware)
    app.add_middleware(GenerateMetricsMiddleware)
    install_error_handlers(app)
    for module in (generate, validate, dsls, adapters, health, playground):
        app.include_router(module.router)
    app.mount("/playground", playground.static_files(), name="playground")
    return app


def _build_services(settings: Settings) -> Services:
    from transformers import AutoTokenizer

    safety = SafetyChecker.load(settings.grammars_dir, enabled=settings.safety)
    grammars = GrammarRegistry(settings.grammars_dir).load(policies=safety)
    model = resolve_model(settings.model, settings.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(model)
    registry = AdapterRegistry(
        settings.adapters_dir, base_fingerprint=base_fingerprint(model), max_rank=settings.max_lora_rank
    ).load()
    for adapter in registry.all():
        if adapter.error:
            log.warning("adapter %s cannot be served: %s", adapter.name, adapter.error)
    log.info("loaded %d dsls (%s) and %d adapters", len(grammars), ", ".join(grammars.names()), len(registry.all()))
    retriever = Retriever(grammars, settings.data_dir)
    keys = KeyStore.from_file(settings.api_keys_file)
    if settings.auth == "off":
        log.warning("authentication is OFF (NL2DSL_AUTH=off): every caller is an admin; for local development only")
    elif not len(keys):
        log.warning("no API keys configured (NL2DSL_API_KEYS_FILE): every API call will be refused with 401")
    admission = Admission(max_queue=settings.max_queue, per_tenant=settings.tenant_max_concurrency,
                          stale_after_s=settings.request_timeout_s + 60)
    return Services(settings=settings, grammars=grammars, adapters=registry, tokenizer=tokenizer, model=model,
                    retriever=retriever, keys=keys, admission=admission, safety=safety)


async def _start_engine(services: Services, stack: AsyncExitStack) -> None:
    try:
        engine = await stack.enter_async_context(open_engine(services.settings, model=services.model))
        started = time.monotonic()
        await _warm_up(services, engine)
        services.engine = engine  # only now does /readyz answer 200
        log.info("engine ready in %.1f s (warm-up %.1f s)", engine.startup_s, time.monotonic() - started)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # keep serving /healthz and /readyz with the reason
        log.exception("engine failed to start")
        services.engine_error = f"engine failed to start: {exc}"


async def _warm_up(services: Services, engine: Engine) -> None:
    """One tiny grammar-constrained generation through a shared adapter (or the base model) before ready.

    The engine's first batch with a grammar and a LoRA pays one-time set-up (measured ~50 s on the 2-core CPU);
    paid here, it delays readiness instead of the first users' requests.
    """
    grammar = next(iter(services.grammars))
    shared = [a for a in services.adapters.all() if a.shared and a.error is None and a.dsl in (None, grammar.name)]
    adapter = shared[0] if shared else None
    prompt = build_prompt(services.tokenizer, grammar, "warm up")
    ids = services.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    params = GenerationParams(max_tokens=2, grammar=grammar.engine_text)
    try:
        async for _ in engine.generate(ids, request_id="warm-up", adapter=adapter.ref if adapter else None,
                                       params=params):
            pass
    except NL2DSLError as exc:  # not fatal: the first real request pays instead
        log.warning("warm-up generation failed: %s", exc.message)


async def _cancel(task: asyncio.Task) -> None:
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
