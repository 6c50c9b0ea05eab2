"""The FastAPI application: ``create_app(settings)``; nothing happens at import time.

The lifespan loads the grammars (a broken grammar stops start-up), the tokenizer and the adapter registry,
then starts the engine in the background: ``/healthz`` answers at once, ``/readyz`` once the model is
loaded (tens of seconds on CPU, minutes for Mistral-7B), and the engine is always shut down on exit, even
when the service is stopped while the model loads. The grammar sandbox's workers are stopped with it.

Middleware, outermost first: request metrics -> same origin (403) -> API key (401) -> body size (413)
-> form bodies read as JSON -> the routers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from service.adapters import AdapterPublisher, AdapterRegistry, AdapterResidency, BaseShapes, DiskCache
from service.api import adapters, dsls, health, onboarding, playground, validate
from service.api.auth import AuthMiddleware
from service.api.body_limit import BodyLimitMiddleware
from service.api.errors import install_error_handlers
from service.api.generate import router as generate
from service.api.generate.serving import GenerateServing
from service.api.json_body import FormAsJSONMiddleware
from service.api.openai import router as openai
from service.api.request_metrics import GenerateMetricsMiddleware
from service.api.same_origin import SameOriginMiddleware
from service.api.upload_body import UploadBodies
from service.config import Settings
from service.engine import IMPORT_LOCK, Engine, EngineSlot, GenerationParams, open_engine
from service.errors import NL2DSLError
from service.grammars import GrammarRegistry, GrammarSandbox, TenantConfigs
from service.grammars.uploads import DSLPublisher
from service.journal import Journal
from service.limits import Admission
from service.model import base_fingerprint, resolve_model
from service.onboarding.jobs import OnboardingJobs, RunLimits
from service.prompts import prompt_token_ids
from service.publishing import OwnerGate
from service.retrieval import Retriever
from service.safety import SafetyChecker
from service.security import Caller, KeyStore
from service.store import Versions, open_store
from service.sync import StoreFollower
from service.upload_pool import UploadPool

__all__ = ["build_serving", "create_app"]

log = logging.getLogger("nl2dsl")


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """Build the app. ``engine`` replaces the real one (unit tests pass a fake)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            slot = EngineSlot(resolve_model(settings.model, settings.cache_dir))
            opening = None
            if engine is None:  # the engine starts first: its processes load while the rest is set up
                log.info("starting the engine")
                opening = asyncio.create_task(stack.enter_async_context(open_engine(settings, model=slot.model)))
                stack.push_async_callback(_cancel, opening)
            store = open_store(settings.store or str(settings.cache_dir / "store"),
                               endpoint_url=settings.s3_endpoint_url)
            versions, journal = Versions(store), Journal(store)
            gate = OwnerGate(versions, journal, max_bytes=settings.max_store_bytes_per_tenant,
                             per_minute=settings.publishes_per_minute)
            pool = UploadPool(workers=settings.upload_workers)
            stack.callback(pool.close)
            cache = await asyncio.to_thread(DiskCache, settings.cache_dir / "published-adapters",
                                            max_bytes=settings.adapter_cache_bytes)
            app.state.serving = serving = await asyncio.to_thread(
                _build_serving_after_imports, settings, slot, versions=versions, cache=cache, pool=pool)
            app.state.grammars, app.state.adapters = serving.grammars, serving.adapters
            app.state.engine_slot = serving.engine
            stack.push_async_callback(serving.grammars.sandbox.close)
            app.state.upload_bodies = UploadBodies(
                per_owner=settings.upload_bodies_per_tenant, max_bytes=settings.upload_bytes_in_flight,
                spool_dir=settings.cache_dir / "upload-bodies")
            app.state.dsl_publisher = DSLPublisher(serving.grammars, versions, settings, gate=gate, pool=pool)
            app.state.adapter_publisher = AdapterPublisher(serving.adapters, versions, settings, serving.engine,
                                                           gate=gate, pool=pool, residency=serving.residency)
            follower = StoreFollower(versions, journal, [app.state.dsl_publisher, app.state.adapter_publisher],
                                     poll_s=settings.store_poll_s)
            stack.push_async_callback(_cancel, asyncio.create_task(follower.follow()))
            app.state.onboarding_jobs = OnboardingJobs(
                settings.onboarding_dir or settings.cache_dir / "onboarding", url=_own_url(settings),
                cache_dir=settings.cache_dir, model=settings.model,
                limits=RunLimits(memory_mb=settings.onboarding_memory_mb, nice=settings.onboarding_nice,
                                 max_tenant_bytes=settings.onboarding_max_tenant_bytes,
                                 retention_s=settings.onboarding_retention_s),
                others_busy=lambda tenant: serving.admission.others_outstanding(tenant) > 0)
            stack.callback(app.state.onboarding_jobs.close)
            if settings.metrics_port is not None:
                stack.callback(_serve_metrics(settings.host, settings.metrics_port))
            if opening is None:
                serving.engine.engine = engine
            else:
                loading = asyncio.create_task(_get_ready(serving, opening, settings, follower))
                stack.push_async_callback(_cancel, loading)
            yield

    app = FastAPI(
        title="nl2dsl",
        version="0.1.0",
        summary="Natural language to DSL code: multi-LoRA, grammar-constrained generation on vLLM.",
        lifespan=lifespan,
        strict_content_type=False,  # a body without content-type is read as JSON
    )
    app.state.settings = settings
    keys = None if settings.auth == "off" else KeyStore(settings.api_keys_file)
    if keys is None:
        log.warning("authentication is OFF (NL2DSL_AUTH=off): every caller is an admin; for local development only")
    elif not len(keys):
        log.warning("no API keys configured (NL2DSL_API_KEYS_FILE): every API call will be refused with 401")
    # Added innermost first: the last one added sees the request first.
    app.add_middleware(FormAsJSONMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       larger={("POST", "/adapters"): settings.max_adapter_bytes,
                               ("POST", "/dsls/[^/]+/examples"): settings.max_adapter_bytes,
                               ("POST", "/onboarding"): settings.max_adapter_bytes},
                       timeout_s=settings.upload_body_timeout_s)
    app.add_middleware(AuthMiddleware, keys=keys)
    app.add_middleware(SameOriginMiddleware)
    app.add_middleware(GenerateMetricsMiddleware)
    install_error_handlers(app)
    for module in (generate, openai, validate, dsls, adapters, onboarding, health, playground):
        app.include_router(module.router)
    if settings.serves_metrics_on_api:
        app.include_router(health.metrics_router)
    elif settings.metrics_port is None:
        log.warning("/metrics is not served: API keys are on, so the API port does not serve it; set "
                    "NL2DSL_METRICS_PORT (the chart sets 9090), or NL2DSL_METRICS_ON_API=true")
    app.mount("/playground", playground.static_files(), name="playground")
    return app


def _own_url(settings: Settings) -> str:
    """This replica's API, as a child process on the same machine reaches it."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{'[' + host + ']' if ':' in host else host}:{settings.port}"


def _build_serving_after_imports(settings: Settings, slot: EngineSlot, **store) -> GenerateServing:
    with IMPORT_LOCK:
        return build_serving(settings, slot, **store)


def build_serving(settings: Settings, slot: EngineSlot | None = None, *, versions: Versions | None = None,
                  cache: DiskCache | None = None, pool: UploadPool | None = None) -> GenerateServing:
    """The request path's pieces (registries, retriever, tokenizer, checks, admission; the engine's slot), each
    given what it needs as it is made. With the store's ``versions``, the adapter ``cache`` and the upload
    ``pool``: the residency that fetches published adapters' files (without: shipped adapters only, as tools
    that read no store)."""
    tenants = TenantConfigs.load(settings.grammars_dir)
    sandbox = GrammarSandbox(workers=settings.grammar_workers, memory_mb=settings.grammar_worker_memory_mb,
                             compile_timeout_s=settings.grammar_compile_timeout_s,
                             parse_timeout_s=settings.parse_timeout_s)
    grammars = GrammarRegistry(settings.grammars_dir, tenants=tenants, narrow_to_policies=settings.safety,
                               sandbox=sandbox, versions=versions, max_compiled=settings.max_compiled_dsls).load()
    model = slot.model if slot else resolve_model(settings.model, settings.cache_dir)
    registry = AdapterRegistry(settings.adapters_dir, base_fingerprint=base_fingerprint(model),
                               base=BaseShapes.of(model), max_rank=settings.max_lora_rank).load()
    for adapter in registry.all():
        if adapter.error:
            log.warning("adapter %s cannot be served: %s", adapter.name, adapter.error)
    log.info("loaded %d dsls (%s) and %d adapters", len(grammars), ", ".join(grammars.names()), len(registry.all()))
    serving = GenerateServing(
        settings=settings,
        grammars=grammars,
        adapters=registry,
        retriever=Retriever(grammars, settings.data_dir),
        tokenizer=_tokenizer(model),
        safety=SafetyChecker(tenants.policy, enabled=settings.safety),
        admission=Admission(max_queue=settings.max_queue, per_tenant=settings.tenant_max_concurrency,
                            engine_slots=settings.engine_slots),
        engine=slot or EngineSlot(model),
        residency=AdapterResidency(registry, versions, cache, pool=pool, max_adapter_bytes=settings.max_adapter_bytes)
        if versions is not None and cache is not None and pool is not None else None,
    )
    return serving


@functools.lru_cache(maxsize=2)
def _tokenizer(model: str):
    """The base model's tokenizer, loaded once per process (it is only read)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


async def _get_ready(serving: GenerateServing, opening: asyncio.Task, settings: Settings,
                     follower: StoreFollower) -> None:
    """Wait for the engine, warm it up and for the store's index, then hand it to the request path."""
    try:
        engine = await opening
        started = time.monotonic()
        await _warm_up(serving, engine)
        # Ready knows what the store holds too: wait for its journal's index, one snapshot and the lines after it,
        # never any adapter's files or DSL's compile (not forever: a store that is down must not keep the shipped
        # DSLs from being served).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10 * settings.store_poll_s + 30):
                await follower.synced.wait()
        serving.engine.engine = engine  # only now does /readyz answer 200
        log.info("engine ready in %.1f s (warm-up %.1f s)", engine.startup_s, time.monotonic() - started)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # keep serving /healthz and /readyz with the reason
        log.exception("engine failed to start")
        serving.engine.error = f"engine failed to start: {type(exc).__name__}"


async def _warm_up(serving: GenerateServing, engine: Engine) -> None:
    """One tiny grammar-constrained generation through a shared adapter (or the base model) before ready.

    The engine's first batch with a grammar and a LoRA pays one-time set-up (measured ~50 s on the 2-core CPU);
    paid here, it delays readiness instead of the first users' requests. The adapter is the one a caller
    with no tenant would get (the access rule of service.adapters): a shared one, or none.
    """
    grammar = next(iter(serving.grammars))
    adapter = serving.adapters.resolve(Caller(key_id="warm-up"), dsl=grammar.name)
    ids = await asyncio.to_thread(prompt_token_ids, serving.tokenizer, grammar, "warm up")
    params = GenerationParams(max_tokens=2, grammar=grammar.engine_text)
    try:
        async for _ in engine.generate(ids, request_id=f"warm-up-{uuid.uuid4().hex}",
                                       adapter=adapter.ref(grammar.name) if adapter else None, params=params):
            pass
    except NL2DSLError as exc:  # not fatal: the first real request pays instead
        log.warning("warm-up generation failed: %s", exc.message)


def _serve_metrics(host: str, port: int):
    """Prometheus's own HTTP server for /metrics on ``port``; returns its stop function."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host)

    def stop() -> None:
        server.shutdown()
        thread.join(timeout=5)

    return stop


async def _cancel(task: asyncio.Task) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling it again should code on its way swallow a
    cancellation (Python 3.11's ``asyncio.wait_for`` does, when what it waits for finishes at that moment)."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=1.0)
