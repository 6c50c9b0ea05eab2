"""The benchmarks' workload: real held-out requests, turned into prompts by the service's own request path.

``prompts`` runs ``GenerateServing.start`` (the code behind ``POST /generate``) on test rows, so the raw engine gets
exactly the token ids, grammar and adapter the service would send it. ``run_raw`` drives vLLM's ``AsyncLLM``
directly, the baseline every service-side cost is measured against.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from dataclasses import dataclass

from service.api.generate.schemas import GenerateRequest
from service.api.generate.serving import GenerateServing
from service.api.generate.serving import Job as Prepared
from service.config import PROJECT_ROOT, Settings
from service.security import DEVELOPER


def test_rows(n: int, dsl: str = "flow") -> list[dict]:
    """The first ``n`` held-out requests of a shipped DSL (repeated when ``n`` is larger than the set)."""
    lines = (PROJECT_ROOT / "data" / dsl / "test.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return list(itertools.islice(itertools.cycle(rows), n))


def serving(settings: Settings) -> GenerateServing:
    from service.app import build_serving

    return build_serving(settings)


async def prompts(serving: GenerateServing, n: int, *, dsl: str = "flow", **request) -> list[Prepared]:
    """``n`` prepared requests of ``dsl`` (``request``: more GenerateRequest fields, e.g. adapter, examples)."""
    prepared = []
    for row in test_rows(n, dsl):
        context = {"context": row["context"]} if "context" in row else {}  # sql rows carry their schema
        job = await serving.start(DEVELOPER, GenerateRequest(dsl=dsl, text=row["text"], **context, **request))
        job.release()  # only its prompt is used, by the raw engine
        prepared.append(job)
    return prepared


def adapter(serving: GenerateServing, name: str):
    """A registered adapter by name."""
    return next(a for a in serving.adapters.all() if a.name == name)


@dataclass(frozen=True)
class Job:
    """One raw engine request."""

    prompt_token_ids: list[int]
    max_tokens: int
    grammar: str | None = None
    lora: object | None = None  # vllm LoRARequest
    ignore_eos: bool = False
    #: vLLM's ``logprobs`` (0: the sampled token's, as service.engine asks for its non-finite check).
    logprobs: int | None = None


def job(prepared: Prepared, *, constrained: bool = True, lora="same", max_tokens: int | None = None,
        ignore_eos: bool = False) -> Job:
    """The raw request for a prepared one; ``lora`` None for the base model, "same" for its adapter."""
    if lora == "same":
        lora = lora_request(prepared.adapter.name, prepared.adapter.lora_id, prepared.adapter.path) \
            if prepared.adapter else None
    return Job(prepared.prompt_token_ids, max_tokens or prepared.params.max_tokens,
               prepared.params.grammar if constrained else None, lora, ignore_eos)


def mixed_jobs(prepared: list[Prepared], adapters: int, path) -> list[Job]:
    """``prepared`` spread over ``adapters`` copies of the adapter at ``path`` (ids 10000 on: vLLM treats each id as
    its own adapter), unconstrained, 12 tokens each: the mixed-adapter workload."""
    return [job(p, constrained=False, max_tokens=12, ignore_eos=True,
                lora=lora_request(f"copy-{10_000 + i % adapters}", 10_000 + i % adapters, path))
            for i, p in enumerate(prepared)]


def lora_request(name: str, lora_id: int, path) -> object:
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora_name=name, lora_int_id=lora_id, lora_path=str(path))


@dataclass(frozen=True)
class RunStats:
    wall_s: float
    output_tokens: int
    #: Time to the first token of each request.
    ttft_s: tuple[float, ...]

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.wall_s


async def run_raw(llm, jobs: list[Job], *, concurrency: int) -> RunStats:
    """Send ``jobs`` to the AsyncLLM, at most ``concurrency`` at a time; wall time and tokens."""
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

    gate = asyncio.Semaphore(concurrency)
    tokens = 0
    ttfts: list[float] = []

    async def one(j: Job) -> None:
        nonlocal tokens
        sampling = SamplingParams(
            max_tokens=j.max_tokens, temperature=0.0, ignore_eos=j.ignore_eos,
            structured_outputs=StructuredOutputsParams(grammar=j.grammar) if j.grammar else None,
            output_kind=RequestOutputKind.DELTA, logprobs=j.logprobs,
        )
        async with gate:
            started = time.perf_counter()
            first = None
            async for out in llm.generate(TokensPrompt(prompt_token_ids=j.prompt_token_ids), sampling,
                                          uuid.uuid4().hex, lora_request=j.lora):
                if first is None and out.outputs[0].token_ids:
                    first = time.perf_counter() - started
                tokens += len(out.outputs[0].token_ids)
            ttfts.append(first or 0.0)

    started = time.perf_counter()
    await asyncio.gather(*(one(j) for j in jobs))
    return RunStats(time.perf_counter() - started, tokens, tuple(ttfts))
