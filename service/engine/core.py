"""The engine's core: one vLLM ``AsyncLLM``, its lifecycle, and a request's stream.

``open_engine`` starts one ``AsyncLLM`` (multi-LoRA on, structured outputs through llguidance) and always
shuts it down; ``Engine.generate`` streams deltas for one request with an optional LoRA adapter and an
optional Lark grammar. Adapters and grammars arrive as plain values and only become ``LoRARequest`` /
``StructuredOutputsParams`` here; vLLM's errors are translated here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from service import metrics
from service.config import Settings
from service.engine import cpu
from service.engine.gateway_metrics import engine_name, prometheus_logger
from service.errors import AdapterUnavailable, BadRequest, EngineUnavailable, GenerationTimeout, GrammarInvalid

__all__ = ["AdapterRef", "Delta", "Engine", "EngineSlot", "GenerationParams", "cache_salt", "open_engine"]

log = logging.getLogger("nl2dsl.engine")


@dataclass(frozen=True)
class AdapterRef:
    """What the engine needs of an adapter: the name clients use (``flow:contoso``), a unique positive id and
    the PEFT folder."""

    name: str
    lora_id: int
    path: str


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = None
    #: Lark grammar in the engine's dialect (``Grammar.engine_text``); None = unconstrained.
    grammar: str | None = None


@dataclass(frozen=True)
class Delta:
    """A piece of generated text; the last one of a request carries ``finish_reason``."""

    text: str
    completion_tokens: int
    finish_reason: str | None = None
    #: Seconds the request waited in the engine's queue before it was scheduled (last delta only).
    queue_s: float | None = None
    #: Prompt tokens read from the prefix cache of the request's own tenant (last delta only).
    cached_tokens: int = 0
    #: The sum of this delta's sampled tokens' log-probabilities under the model (before the grammar's mask).
    logprob: float = 0.0


class Engine:
    """One vLLM ``AsyncLLM``; ``generate`` is safe to call from many requests at once."""

    def __init__(self, llm, *, model: str, startup_s: float = 0.0, max_cpu_loras: int = 16) -> None:
        self._llm = llm
        self.model = model
        self.startup_s = startup_s
        self._host_loras = _LRUMirror(max_cpu_loras)

    @property
    def llm(self):
        """The vLLM ``AsyncLLM`` itself (the benchmarks' raw-engine baseline)."""
        return self._llm

    @property
    def ready(self) -> bool:
        return not self._llm.errored

    async def generate(
        self,
        prompt_token_ids: list[int],
        *,
        request_id: str,
        tenant: str | None = None,
        adapter: AdapterRef | None = None,
        params: GenerationParams = GenerationParams(),
        deadline: float | None = None,
    ) -> AsyncIterator[Delta]:
        """Stream the completion of ``prompt_token_ids``; closing the iterator aborts the request.

        ``tenant``: whose prefix cache the request reads and fills (:func:`cache_salt`); None is the shared one.
        ``deadline`` (``time.monotonic()`` seconds): past it the request is aborted and GenerationTimeout raised.
        ``request_id`` must be unique among requests in flight: vLLM aborts every request that shares one.
        A request whose logits turn non-finite is aborted: AdapterUnavailable names its adapter (the caller
        quarantines that version, so no request meets its cached blocks again), EngineUnavailable without one.
        """
        from vllm.exceptions import VLLMValidationError
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError

        if self._llm.errored:
            raise EngineUnavailable("the engine has stopped; the service is not ready")
        sampling = _sampling_params(params)
        lora = await self.load(adapter) if adapter is not None else None
        tokens, finished = 0, False
        try:
            prompt = TokensPrompt(prompt_token_ids=prompt_token_ids, cache_salt=cache_salt(tenant))
            stream = self._llm.generate(prompt, sampling, request_id, lora_request=lora)
            async for out in _until(stream, deadline):
                completion = out.outputs[0]
                tokens += len(completion.token_ids)
                if not _finite(completion.logprobs):
                    raise _non_finite(adapter)
                logprob = _sampled_logprob(completion.logprobs)
                if out.finished:
                    finished = True
                    yield Delta(completion.text, tokens, completion.finish_reason or "stop", _queue_s(out),
                                out.num_cached_tokens or 0, logprob)
                elif completion.text or completion.token_ids:
                    yield Delta(completion.text, tokens, logprob=logprob)
        except EngineDeadError as exc:
            raise EngineUnavailable("the engine died during generation") from exc
        except VLLMValidationError as exc:  # e.g. a grammar the engine's llguidance cannot decode with
            if "grammar" in str(exc).lower():
                raise GrammarInvalid(f"the engine cannot decode with this grammar: {exc}",
                                     detail={"parser": "llguidance"}) from exc
            raise BadRequest(f"the engine refused the request: {exc}") from exc
        except ValueError as exc:  # vLLM rejects a request it cannot serve (e.g. prompt longer than the model)
            raise BadRequest(f"the engine refused the request: {exc}") from exc
        finally:
            # Closed early (client gone, timeout, caller's `break`): free the engine's slot for this request.
            if not finished and not self._llm.errored:
                await self._llm.abort(request_id)

    async def load(self, adapter: AdapterRef):
        """The adapter's ``LoRARequest``, made once when the engine first loads it (``add_lora``, before it meets a
        batch) and reused by every later request, as vLLM's own OpenAI server keeps its ``LoRARequest`` s.

        A LoRA that fails to load inside a scheduled batch takes the whole engine down; loaded here, the
        failure is this request's own (409) and every other tenant is still served.
        """
        lora = self._host_loras.get(adapter.lora_id)
        loaded = lora is not None
        # A new request object also for the same weights under another name or folder (an adapter made for any
        # DSL, asked for another; an upload's files moved into the cache): vLLM names the request and reloads
        # from it, without loading the weights again here.
        if not loaded or (lora.lora_path, lora.lora_name) != (adapter.path, _engine_name(adapter)):
            lora = _lora_request(adapter)
        if not loaded:
            try:
                await self._llm.add_lora(lora)
            except Exception as exc:  # the reason names server paths: it goes to the log, not the caller
                log.warning("adapter %s could not be loaded: %s", adapter.name, exc)
                raise AdapterUnavailable(
                    f"adapter {adapter.name!r} could not be loaded (its files are unreadable or do not fit the "
                    "base model)", detail={"adapter": adapter.name}
                ) from exc
        self._host_loras.touch(adapter.lora_id, lora)
        return lora


class EngineSlot:
    """Where the engine of ``model`` (a local folder) will be once it has loaded, or why it is not there."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.engine: Engine | None = None
        #: Why the engine is not there (start-up failed); None while loading or when running.
        self.error: str | None = None

    @property
    def state(self) -> str:
        if self.error:
            return "failed"
        if self.engine is None:
            return "loading"
        return "running" if self.engine.ready else "dead"

    def ready(self) -> Engine:
        """The engine if it can take requests now; EngineUnavailable (503) otherwise."""
        if self.engine is None:
            raise EngineUnavailable(f"not ready: {self.error or 'the engine is still loading'}")
        if not self.engine.ready:
            raise EngineUnavailable("not ready: the engine has stopped")
        return self.engine


#: Held while a thread imports vLLM, and while the request path is built beside it: two threads importing the same
#: packages at once can meet one half-imported (transformers' and accelerate's circular imports: an ImportError at
#: start-up, seen when the image first ran). The request path is built once vLLM is imported, while the engine's
#: processes start.
IMPORT_LOCK = threading.Lock()


@asynccontextmanager
async def open_engine(settings: Settings, *, model: str) -> AsyncIterator[Engine]:
    """Start the AsyncLLM for ``model`` (a local folder) and always shut it down afterwards."""
    started = time.monotonic()
    # Importing vLLM takes seconds: in the loading thread, with the rest, never on the event loop.
    loading = asyncio.ensure_future(asyncio.to_thread(_start_async_llm, settings, model))
    try:
        llm = await asyncio.shield(loading)
    except asyncio.CancelledError:
        # Stopped while the model loads (SIGTERM during start-up). Loading a large model takes minutes: stop the
        # engine's process now, which makes the loading thread fail and end; never leave it without an owner.
        while not loading.done():
            _kill_engine_processes()
            await asyncio.wait({loading}, timeout=1.0)
        with contextlib.suppress(Exception):
            loading.result().shutdown()
        raise
    try:
        yield Engine(llm, model=model, startup_s=time.monotonic() - started, max_cpu_loras=settings.max_cpu_loras)
    finally:
        llm.shutdown()
        # Once is enough: AsyncLLM.__del__ shuts down again, and at interpreter exit (the app still holds the
        # engine) vLLM's module globals are gone by then: a TypeError traceback as the last line of every stop.
        llm.shutdown = lambda *args, **kwargs: None


def _start_async_llm(settings: Settings, model: str):
    """vLLM's AsyncLLM for ``model`` as the service configures it (blocking: run it in a thread)."""
    # The vLLM CPU backend reads its KV-cache size and its cores from the environment: set before it starts.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kvcache_gib))
    bind = cpu.cpu_threads_bind(settings.cpu_threads_bind)
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
    with IMPORT_LOCK:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from service.engine.plugins.lora_patches import ONE_PROCESS

        stat_logger = prometheus_logger()

    compiled = cpu.compiles(settings)
    one_process = cpu.one_process(settings, bind)
    with cpu.engine_core_threads(bind if one_process else None):
        return AsyncLLM.from_engine_args(AsyncEngineArgs(
            model=model,
            tokenizer=model,
            dtype=cpu.dtype(settings.dtype, compiled=compiled),
            seed=settings.seed,
            max_model_len=settings.max_model_len,
            enable_lora=True,
            max_loras=settings.max_loras,
            max_cpu_loras=settings.max_cpu_loras,
            max_lora_rank=settings.max_lora_rank,
            enable_prefix_caching=True,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            structured_outputs_config={"backend": "guidance"},
            generation_config="vllm",  # our sampling defaults, not the checkpoint's generation_config.json
            compilation_config={} if compiled else {"mode": 0},  # 0: eager
            additional_config={ONE_PROCESS: True} if one_process else {},  # service/engine/plugins/lora_patches.py
        ), stat_loggers=[stat_logger])  # vllm:lora_requests_info with the names clients use


def _kill_engine_processes() -> None:
    """SIGKILL the engine core processes this process started (vLLM names them ``EngineCore``) and theirs (its
    workers, which would otherwise go on loading the model), not this process's others (grammar workers)."""
    import psutil

    for process in multiprocessing.active_children():
        if not process.name.startswith("EngineCore") or process.pid is None:
            continue
        log.info("stopping the engine process %s (pid %s) while it loads", process.name, process.pid)
        with contextlib.suppress(psutil.Error):
            core = psutil.Process(process.pid)
            for member in [*core.children(recursive=True), core]:
                with contextlib.suppress(psutil.Error):
                    member.kill()


async def _until(stream, deadline: float | None):
    """``stream``'s items, raising GenerationTimeout if the next one has not come by ``deadline``."""
    iterator = aiter(stream)
    while True:
        try:
            async with asyncio.timeout(None if deadline is None else max(0.0, deadline - time.monotonic())):
                item = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise GenerationTimeout("generation took longer than the request timeout and was aborted") from None
        yield item


class _LRUMirror:
    """Mirrors the engine's host LoRA cache (LRU, ``max_cpu_loras`` slots), holding each cached adapter's
    ``LoRARequest``, to count loads and evictions.

    vLLM loads a LoRARequest it has not cached from disk on first use and evicts the least recently used
    one when the cache is full; it exports no metric for either, so the same policy is followed here.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[int, object] = OrderedDict()

    def get(self, lora_id: int):
        """The cached adapter's ``LoRARequest``; None when the engine does not hold it."""
        return self._ids.get(lora_id)

    def touch(self, lora_id: int, lora: object = None) -> None:
        if lora_id in self._ids:
            self._ids.move_to_end(lora_id)
            self._ids[lora_id] = lora if lora is not None else self._ids[lora_id]
            return
        metrics.ADAPTER_LOADS.inc()
        self._ids[lora_id] = lora
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
            metrics.ADAPTER_EVICTIONS.inc()


def cache_salt(tenant: str | None) -> str:
    """The prefix-cache salt of ``tenant``'s requests: cached blocks are shared within a tenant, never across.

    vLLM keys a prompt's first block with its salt (and every later block chains on it). Shared, a replayed
    guess of another tenant's private context came back in 0.09 s when right and 0.93 s when wrong
    (docs/SECURITY.md, 15)."""
    return f"tenant:{tenant}" if tenant is not None else "shared"


def _finite(logprobs) -> bool:
    """Whether every sampled token's raw log-probability is finite (NaN or inf logits make it NaN)."""
    return all(math.isfinite(entry.logprob) for position in logprobs or () for entry in (position or {}).values())


def _sampled_logprob(logprobs) -> float:
    """The sum of the sampled tokens' log-probabilities (``logprobs=0``: each position holds the sampled one)."""
    return sum(entry.logprob for position in logprobs or () for entry in (position or {}).values())


def _non_finite(adapter: AdapterRef | None) -> Exception:
    if adapter is None:
        return EngineUnavailable("the model computed non-finite numbers for this request; it was aborted")
    return AdapterUnavailable(f"adapter {adapter.name!r} made the model compute non-finite numbers; the request "
                              "was aborted and the adapter is no longer served here",
                              detail={"adapter": adapter.name,
                                      "reason": "it made the model compute non-finite numbers"})


def _sampling_params(params: GenerationParams):
    from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

    structured = StructuredOutputsParams(grammar=params.grammar) if params.grammar else None
    return SamplingParams(
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        seed=params.seed,
        structured_outputs=structured,
        output_kind=RequestOutputKind.DELTA,
        logprobs=0,  # the sampled token's raw log-probability: NaN when the logits are not finite (``_finite``)
    )


def _lora_request(adapter: AdapterRef | None):
    if adapter is None:
        return None
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora_name=_engine_name(adapter), lora_int_id=adapter.lora_id, lora_path=adapter.path)


def _engine_name(adapter: AdapterRef) -> str:
    return engine_name(adapter.name, adapter.lora_id)


def _queue_s(out) -> float | None:
    stats = getattr(out, "metrics", None)
    if stats is None or not stats.scheduled_ts or not stats.queued_ts:
        return None
    return max(0.0, stats.scheduled_ts - stats.queued_ts)
