"""Sizing the production profile on paper: GPUs and replicas for N tenants at R requests/s within a p95.

``python -m bench.capacity [--rate-per-tenant 0.02] [--p95 2.0]`` writes docs/CAPACITY.md and docs/CAPACITY.png.

No GPU is at hand, so this is a model, small enough to check by hand, built from three kinds of input:

- published figures (each cited in ``SOURCES``): Mistral-7B's shape from its config, the GPUs' datasheets, and one
  published vLLM run of Mistral-7B (an RTX 4090 concurrency sweep) that calibrates the model's efficiency;
- our workload, measured here: the prompt and output tokens of each DSL as the service builds them (with and
  without retrieved examples);
- our measured ratios (docs/bench/results/engine.json, from ``make bench``):
  adapter vs base model, constrained vs free decoding, many distinct adapters vs one.

The model of one replica (one GPU, the whole model on it): a decoding step reads the weights, the LoRA slots in
use and every running sequence's KV cache once (memory-bound), or does 2 x parameters FLOPs per token (compute-
bound), whichever is slower; a prompt costs 2 x parameters FLOPs per token. B requests running together finish a
"round" of ``output`` steps plus their B prompts; that round's length is a request's latency, B / round its
throughput. The efficiency (the share of the datasheet a real engine reaches) is fitted to the published run.

Longer than ~400 lines on purpose: the model, its cited inputs and the page it writes are kept in one file so a
reader can check the sizing by hand from top to bottom.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import dataclass

from bench.results import RESULTS_DIR, ROOT, progress

COMMAND = "python -m bench.capacity"
DOC = ROOT / "docs" / "CAPACITY.md"
PLOT = ROOT / "docs" / "CAPACITY.png"

SOURCES = {
    "mistral": "Mistral-7B-v0.1 config.json (huggingface.co/mistralai/Mistral-7B-v0.1): 32 layers, hidden 4096, "
               "intermediate 14336, 32 heads, 8 KV heads of 128; 7.24 B parameters",
    "h100": "NVIDIA H100 datasheet: H100 SXM 80 GB HBM3, 3.35 TB/s, 989 TFLOPS bf16 dense",
    "a100": "NVIDIA A100 datasheet: A100 SXM 80 GB HBM2e, 2.04 TB/s, 312 TFLOPS bf16 dense",
    "l4": "NVIDIA L4 datasheet: 24 GB GDDR6, 300 GB/s, 121 TFLOPS bf16 dense",
    "rtx4090": "NVIDIA Ada (AD102) whitepaper: RTX 4090 24 GB GDDR6X, 1,008 GB/s, 165 TFLOPS bf16 dense "
               "(FP32 accumulate)",
    "sweep": "M. Rahman, 'Benchmarking Mistral-7B on RTX 4090: vLLM Concurrency, Latency, and Capacity Planning' "
             "(mushfiqrahman.dev): Mistral-7B-Instruct-v0.3 on vLLM, 256 prompt -> 128 output tokens, "
             "output tokens/s at max concurrency 4, 8, 16, 32, 48",
}


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gb: float
    bandwidth_gbs: float
    tflops: float


GPUS = {
    "H100": Gpu("H100 SXM 80 GB", 80, 3350, 989),
    "A100": Gpu("A100 SXM 80 GB", 80, 2039, 312),
    "L4": Gpu("L4 24 GB", 24, 300, 121),
    "RTX4090": Gpu("RTX 4090 24 GB", 24, 1008, 165),
}

# Mistral-7B in bf16 (SOURCES["mistral"]).
PARAMS = 7.24e9
WEIGHT_BYTES = PARAMS * 2
LAYERS, HIDDEN, INTERMEDIATE, KV_HEADS, HEAD_DIM = 32, 4096, 14336, 8, 128
KV_BYTES_PER_TOKEN = 2 * LAYERS * KV_HEADS * HEAD_DIM * 2  # keys and values, bf16: 128 KiB
RANK = 16  # the chart's maxLoraRank
#: One LoRA slot: A (rank x in) and B (out x rank) for q, k, v, o, gate, up and down of every layer, bf16.
_IN_OUT = [(HIDDEN, HIDDEN), (HIDDEN, KV_HEADS * HEAD_DIM), (HIDDEN, KV_HEADS * HEAD_DIM), (HIDDEN, HIDDEN),
           (HIDDEN, INTERMEDIATE), (HIDDEN, INTERMEDIATE), (INTERMEDIATE, HIDDEN)]
SLOT_BYTES = LAYERS * RANK * sum(i + o for i, o in _IN_OUT) * 2
GPU_MEMORY_UTILIZATION = 0.9  # the chart's gpu profile
ACTIVATION_RESERVE_GB = 2.0  # vLLM's profiling run, CUDA graphs, sampler buffers (an assumption)

#: SOURCES["sweep"]: (max concurrency, output tokens/s), 256 prompt and 128 output tokens.
SWEEP = [(4, 210), (8, 377), (16, 644), (32, 975), (48, 1190)]
SWEEP_PROMPT, SWEEP_OUTPUT = 256, 128

SAMPLE = 40  # held-out requests per DSL whose prompt and output tokens are counted
MAX_CONCURRENCY = 512
MAX_LORAS_CHOICES = (4, 8, 16, 32, 64, 128)
QUEUE_MARGIN = 1.5  # a request's round may take the p95 / 1.5; the rest is room for queueing ...
LOAD = 0.7  # ... with replicas planned at 70% of their capacity (Poisson arrivals)

@dataclass(frozen=True)
class Workload:
    prompt_tokens: float
    output_tokens: float


@dataclass(frozen=True)
class Replica:
    """What one GPU sustains for a workload within a latency target."""

    max_loras: int
    concurrency: int
    latency_s: float
    capacity_rps: float  # requests/s at that concurrency
    limit: str  # what stopped concurrency from growing


def round_seconds(gpu: Gpu, work: Workload, concurrency: int, *, efficiency: float, adapters: float = 1) -> float:
    """How long ``concurrency`` requests running together take to prefill and decode (one request's latency)."""
    context = work.prompt_tokens + work.output_tokens / 2  # the mean KV length over a request's decoding
    step_bytes = WEIGHT_BYTES + adapters * SLOT_BYTES + concurrency * context * KV_BYTES_PER_TOKEN
    memory_s = step_bytes / (gpu.bandwidth_gbs * 1e9)
    compute_s = 2 * PARAMS * concurrency / (gpu.tflops * 1e12)
    prefill_s = 2 * PARAMS * concurrency * work.prompt_tokens / (gpu.tflops * 1e12)
    return (work.output_tokens * max(memory_s, compute_s) + prefill_s) / efficiency


def fitted_efficiency() -> tuple[float, list[tuple[int, float, float]]]:
    """The share of the datasheet a real vLLM reaches: the median of published / modelled throughput over the
    sweep, with each point (concurrency, published, modelled at efficiency 1) for the report."""
    gpu, work = GPUS["RTX4090"], Workload(SWEEP_PROMPT, SWEEP_OUTPUT)
    points = [(c, tokens_s, c * SWEEP_OUTPUT / round_seconds(gpu, work, c, efficiency=1.0)) for c, tokens_s in SWEEP]
    return statistics.median(published / modelled for _, published, modelled in points), points


def kv_capacity(gpu: Gpu, work: Workload, max_loras: int) -> int:
    """Sequences the KV cache holds at once, after the weights, the LoRA slots and the activation reserve."""
    free = gpu.memory_gb * 1e9 * GPU_MEMORY_UTILIZATION - WEIGHT_BYTES - max_loras * SLOT_BYTES \
        - ACTIVATION_RESERVE_GB * 1e9
    return max(0, int(free // ((work.prompt_tokens + work.output_tokens) * KV_BYTES_PER_TOKEN)))


def replica(gpu: Gpu, work: Workload, *, p95_s: float, efficiency: float, slowdown: float, tenants: int,
            max_loras: int) -> Replica:
    """The most concurrency whose round fits the latency budget, the KV cache and the adapter slots.

    Requests come from ``tenants`` tenants, each with its adapter, spread evenly: c requests in flight hold
    tenants x (1 - (1 - 1/tenants)^c) distinct adapters, and vLLM batches at most ``max_loras`` of them.
    ``slowdown``: our measured ratios multiplied (adapter vs base, grammar). The round must fit the p95 over
    ``QUEUE_MARGIN``, the room left for queueing at ``LOAD`` of the capacity.
    """
    kv = kv_capacity(gpu, work, max_loras)
    best, limit = 0, "latency"
    for concurrency in range(1, MAX_CONCURRENCY + 1):
        distinct = tenants * (1 - (1 - 1 / tenants) ** concurrency)
        seconds = round_seconds(gpu, work, concurrency, efficiency=efficiency, adapters=distinct) / slowdown
        if concurrency > kv:
            limit = "KV cache"
        elif distinct > max_loras + 0.5:
            limit = "adapter slots"
        elif seconds > p95_s / QUEUE_MARGIN:
            limit = _bottleneck(gpu, work, concurrency, distinct)
        else:
            best = concurrency
            continue
        break
    if best == 0:
        return Replica(max_loras, 0, math.inf, 0.0, limit)
    distinct = tenants * (1 - (1 - 1 / tenants) ** best)
    latency = round_seconds(gpu, work, best, efficiency=efficiency, adapters=distinct) / slowdown
    return Replica(max_loras, best, latency, best / latency, limit)


def _bottleneck(gpu: Gpu, work: Workload, concurrency: int, adapters: float) -> str:
    """Which part of a round takes longer: the prompts (compute) or the decoding steps (mostly bandwidth)."""
    prefill = round_seconds(gpu, Workload(work.prompt_tokens, 0), concurrency, efficiency=1.0, adapters=adapters)
    decode = round_seconds(gpu, work, concurrency, efficiency=1.0, adapters=adapters) - prefill
    return "latency: prompts (compute)" if prefill > decode else "latency: decoding (memory bandwidth)"


def best_replica(gpu: Gpu, work: Workload, **kwargs) -> Replica:
    """The max_loras (the chart's engine.maxLoras) that gives a replica the most capacity: slots cost KV memory."""
    return max((replica(gpu, work, max_loras=m, **kwargs) for m in MAX_LORAS_CHOICES), key=lambda r: r.capacity_rps)


def measured_ratios() -> tuple[dict[str, float], str]:
    """Adapter vs base model and constrained vs free decoding, from the latest ``make bench`` (bench.engine).

    Many distinct adapters are modelled (their slots' bytes read every step), not taken from the CPU's ratio:
    on a GPU vLLM's Punica kernels do the grouping our CPU ops do."""
    path = RESULTS_DIR / "engine.json"
    if not path.exists():
        raise SystemExit(f"no {path.relative_to(ROOT)}: run `python -m bench.engine` first (make bench)")
    result = json.loads(path.read_text())

    def ratio(prefix: str) -> float:
        return next(r["ratio"] for r in result["comparisons"] if r["name"].startswith(prefix))

    return {"adapter": ratio("LoRA adapter vs base model"), "grammar": ratio("grammar-constrained decoding")}, \
        f"docs/bench/results/engine.json, `make bench` of {result['finished']}"


def measured_workloads() -> dict[str, Workload]:
    """Mean prompt and output tokens of flow and sql as the service builds them, with 0 and 3 examples."""
    import asyncio

    from bench import workload
    from service.config import Settings

    serving = workload.serving(Settings())
    workloads = {}
    for dsl in ("flow", "sql"):
        codes = [row["code"] for row in workload.test_rows(SAMPLE, dsl)]
        outputs = statistics.mean(len(serving.tokenizer.encode(c)) + 1 for c in codes)  # + end of sequence
        for examples in (0, 3):
            prepared = asyncio.run(workload.prompts(serving, SAMPLE, dsl=dsl, examples=examples))
            workloads[f"{dsl}, {examples} examples"] = Workload(
                statistics.mean(len(p.prompt_token_ids) for p in prepared), outputs)
    return workloads


@dataclass(frozen=True)
class Plan:
    tenants: int
    gpu: str
    requests_per_s: float
    replica: Replica
    replicas: int


def plan(tenants: int, rate: float, gpu: str, work: Workload, **kwargs) -> Plan:
    """Replicas (one GPU each) for ``tenants`` sending ``rate`` requests/s each, every replica at ``LOAD``."""
    one = best_replica(GPUS[gpu], work, tenants=tenants, **kwargs)
    rps = tenants * rate
    replicas = math.ceil(rps / (LOAD * one.capacity_rps)) if one.capacity_rps else 0
    return Plan(tenants, gpu, rps, one, replicas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate-per-tenant", type=float, default=0.02, help="requests/s per tenant at peak")
    parser.add_argument("--p95", type=float, default=2.0, help="p95 latency target, seconds")
    args = parser.parse_args()
    efficiency, sweep = fitted_efficiency()
    progress(f"efficiency fitted to the published RTX 4090 sweep: {efficiency:.2f}")
    ratios, ratios_from = measured_ratios()
    progress(f"measured ratios ({ratios_from}): {ratios}")
    workloads = measured_workloads()
    for name, work in workloads.items():
        progress(f"{name}: {work.prompt_tokens:.0f} prompt tokens, {work.output_tokens:.0f} output tokens")
    with_examples = [w for name, w in workloads.items() if not name.endswith(" 0 examples")]
    mix = Workload(statistics.mean(w.prompt_tokens for w in with_examples),
                   statistics.mean(w.output_tokens for w in with_examples))
    common = {"p95_s": args.p95, "efficiency": efficiency, "slowdown": ratios["adapter"] * ratios["grammar"]}
    plans = [plan(t, args.rate_per_tenant, g, mix, **common)
             for t in (100, 1_000, 10_000) for g in ("H100", "A100", "L4")]
    per_dsl = {name: best_replica(GPUS["H100"], w, tenants=1_000, **common) for name, w in workloads.items()}
    DOC.write_text(_report(args, efficiency, sweep, ratios, ratios_from, workloads, mix, plans, per_dsl))
    _plot(args, mix, common)
    progress(f"wrote {DOC.relative_to(ROOT)} and {PLOT.relative_to(ROOT)}")


def _report(args, efficiency, sweep, ratios, ratios_from, workloads, mix, plans, per_dsl) -> str:
    lines = [
        "# Capacity: sizing the production profile",
        "",
        "How many GPUs serve N tenants, each with its own adapter, at a given request rate within a p95 latency,",
        "for the production profile (Mistral-7B in bf16 on vLLM, one GPU per replica, the chart's gpu profile).",
        "No GPU was at hand: these are the figures of a small model built from published numbers (cited below),",
        "our workload and our measured ratios, with every assumption stated. Produced by:",
        "",
        "```sh",
        f"{COMMAND} --rate-per-tenant {args.rate_per_tenant} --p95 {args.p95}",
        "```",
        "",
        f"## The answer: {args.rate_per_tenant} requests/s per tenant at peak, p95 {args.p95:g} s",
        "",
        f"Workload: the mean of flow and sql with 3 retrieved examples, {mix.prompt_tokens:.0f} prompt tokens and "
        f"{mix.output_tokens:.0f} output tokens a request.",
        "",
        "| tenants | requests/s | GPU | replicas (= GPUs) | per replica: concurrency, round, capacity | maxLoras | "
        "first limit | adapters in host memory per replica (routing by adapter / none) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in plans:
        r = p.replica
        if not p.replicas:
            alone = round_seconds(GPUS[p.gpu], mix, 1, efficiency=efficiency) / (ratios["adapter"] * ratios["grammar"])
            lines.append(f"| {p.tenants:,} | {p.requests_per_s:g} | {GPUS[p.gpu].name} | none meets the p95 | one "
                         f"request alone takes {alone:.1f} s | | {r.limit} | |")
            continue
        per_replica = math.ceil(p.tenants / p.replicas) if p.replicas else p.tenants
        lines.append(
            f"| {p.tenants:,} | {p.requests_per_s:g} | {GPUS[p.gpu].name} | {p.replicas} | {r.concurrency}, "
            f"{r.latency_s:.2f} s, {r.capacity_rps:.1f} req/s | {r.max_loras} | {r.limit} | "
            f"{_gb(per_replica * SLOT_BYTES)} / {_gb(p.tenants * SLOT_BYTES)} |")
    lines += [
        "",
        "![replicas by tenants](CAPACITY.png)",
        "",
        "How to read it:",
        "- **first limit** is what stopped a replica's concurrency from growing. With hundreds of tenants or more,",
        "  nearly every request in flight belongs to a different tenant, so a batch needs as many adapter slots",
        "  as requests: `engine.maxLoras` must reach the concurrency the latency allows, and each slot",
        f"  ({_gb(SLOT_BYTES)} at rank {RANK}) comes out of the KV cache. The table picks the best maxLoras from "
        f"{', '.join(map(str, MAX_LORAS_CHOICES))}.",
        "- **adapters in host memory**: every adapter a replica may serve sits in its CPU cache "
        "(`engine.maxCpuLoras`) or is read from its disk on first use. Routing each adapter to a fixed",
        "  replica (consistent hashing with bounded loads; see below) divides this by the number of replicas;",
        "  without it every replica needs room for every adapter.",
        *[f"- The {GPUS[g].name} cannot meet this p95 at all: reading the weights once per output token takes "
          f"{WEIGHT_BYTES / (GPUS[g].bandwidth_gbs * 1e9) * 1e3:.0f} ms at its datasheet bandwidth, so one request "
          f"of {mix.output_tokens:.0f} output tokens alone takes longer than the round allows."
          for g in sorted({p.gpu for p in plans if not p.replicas})],
        "- Past the first limit come the others: a replica's host memory for adapters is a cache, not a wall (a",
        "  cold adapter is read from its disk, about 84 MB at rank 16), and at 10,000 tenants it is what",
        "  routing by adapter saves.",
        "",
        *_residency(plans),
        "## One replica per workload (H100, 1,000 tenants)",
        "",
        "| workload | prompt tokens | output tokens | concurrency | round (s) | capacity (req/s) | maxLoras | limit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in per_dsl.items():
        w = workloads[name]
        lines.append(f"| {name} | {w.prompt_tokens:.0f} | {w.output_tokens:.0f} | {r.concurrency} | "
                     f"{r.latency_s:.2f} | {r.capacity_rps:.1f} | {r.max_loras} | {r.limit} |")
    lines += [
        "",
        *[_examples_cost(dsl, workloads, per_dsl) for dsl in ("flow", "sql")],
        "Examples are paid for in prefill compute and KV cache on every request; the evaluation",
        "(docs/EVALUATION.md) says whether they earn it for a given adapter.",
        "",
        "## The model",
        "",
        "One replica runs B requests together. A decoding step reads the weights "
        f"({WEIGHT_BYTES / 1e9:.1f} GB), the LoRA slots of the adapters in the batch ({_gb(SLOT_BYTES)} each) and",
        f"every running sequence's KV cache ({KV_BYTES_PER_TOKEN // 1024} KiB a token) once, or does 2 x "
        f"{PARAMS / 1e9:.2f} G FLOPs per sequence, whichever takes longer at the datasheet's bandwidth and FLOPS;",
        "a prompt costs 2 x parameters FLOPs per token. The B requests' prompts and output steps make a round,",
        "which is one request's latency; B / round is the replica's capacity. All of it is divided by one",
        "efficiency, fitted below, and by our measured slowdowns.",
        "",
        "Assumptions:",
        f"- one GPU per replica, `gpuMemoryUtilization` {GPU_MEMORY_UTILIZATION}, {ACTIVATION_RESERVE_GB:g} GB kept "
        "for activations, LoRA rank 16 on all seven projections;",
        "- requests spread evenly over tenants; c requests in flight hold tenants x (1 - (1 - 1/tenants)^c)",
        "  distinct adapters;",
        f"- a round may take the p95 / {QUEUE_MARGIN:g}, and replicas are planned at {LOAD:.0%} of their capacity,",
        "  the room left for Poisson arrivals to queue;",
        "- prompt and output tokens are counted with the embedded model's tokenizer (SmolLM2, 49k vocabulary);",
        "  Mistral's 32k tokenizer gives somewhat more tokens for the same text, so the figures lean optimistic",
        "  by that much.",
        "",
        "### Efficiency, fitted to a published vLLM run",
        "",
        "Mistral-7B-Instruct-v0.3 on vLLM on an RTX 4090, 256 prompt and 128 output tokens [sweep]: published",
        "output tokens/s against the model at efficiency 1.",
        "",
        "| max concurrency | published tokens/s | model at efficiency 1 | published / model |",
        "|---|---|---|---|",
    ]
    lines += [f"| {c} | {published:g} | {modelled:.0f} | {published / modelled:.2f} |"
              for c, published, modelled in sweep]
    lines += [
        "",
        f"Efficiency used: the median, **{efficiency:.2f}**. The same share of the datasheet is assumed on the",
        "H100, A100 and L4 (a CUDA-graph decode on those reaches a similar share of its bandwidth; an H100 may do",
        "better, so its rows lean conservative).",
        "",
        "### Our measured ratios",
        "",
        f"From {ratios_from}: a LoRA adapter keeps {ratios['adapter']:.2f} of the base model's throughput and",
        f"grammar-constrained decoding {ratios['grammar']:.2f} of free decoding; their product "
        f"({ratios['adapter'] * ratios['grammar']:.2f}) divides every round. Both were measured on the CPU with",
        "our LoRA ops; vLLM's GPU kernels are faster relative to the base model, so this leans conservative.",
        "Many distinct adapters are modelled by the bytes their slots add to each step, not by the CPU's",
        "mixed-adapter ratio: on a GPU vLLM groups them with its Punica kernels as our CPU ops now do.",
        "",
        "### Sources",
        "",
    ]
    lines += [f"- [{key}] {text}" for key, text in SOURCES.items()]
    return "\n".join(lines) + "\n"


def _examples_cost(dsl: str, workloads: dict[str, Workload], per_dsl: dict[str, Replica]) -> str:
    without, with_ = f"{dsl}, 0 examples", f"{dsl}, 3 examples"
    grows = workloads[with_].prompt_tokens / workloads[without].prompt_tokens
    falls = per_dsl[without].capacity_rps / per_dsl[with_].capacity_rps
    return f"With 3 retrieved examples {dsl}'s prompt grows {grows:.1f}x and a replica's capacity falls {falls:.1f}x."


def _residency(plans: list[Plan]) -> list[str]:
    """What fetching adapters on first use and routing by adapter change per H100 replica (docs/SCALE.md)."""
    lines = [
        "## Adapters on each replica's disk: residency and routing",
        "",
        "Replicas fetch a published adapter's files when a request first needs them and keep them in a disk cache",
        "bounded in bytes (`store.adapterCacheGiB`); before, every replica downloaded every adapter ever published",
        "before it could take traffic. What a replica must hold to serve without fetching in the steady state:",
        "",
        "| tenants | H100 replicas | before: every adapter, before ready | spread routing (round robin, least queue, "
        "the picker at these maxLoras): every adapter, fetched on use | bounded-load hashing by adapter: its share |",
        "|---|---|---|---|---|",
    ]
    for p in plans:
        if p.gpu != "H100" or not p.replicas or p.tenants < 1_000:
            continue
        lines.append(f"| {p.tenants:,} | {p.replicas} | {_gb(p.tenants * SLOT_BYTES)} | "
                     f"{_gb(p.tenants * SLOT_BYTES)} | "
                     f"{_gb(min(p.tenants, math.ceil(p.tenants / p.replicas * 1.25)) * SLOT_BYTES)} |")
    lines += [
        "",
        "- A smaller cache is allowed: it costs fetches, not errors. docs/SCALE.md simulates 8 H100 replicas with a",
        "  cache of 1,000 adapters (84 GB) each: at 10,000 tenants spread routing fetches about 86 adapters a second",
        "  from the store (7 GB/s), bounded-load hashing 23; at 1,000 tenants 9.7 against 1.3.",
        "- The share column allows the bound's 1.25 x the mean load (at most every adapter). The picker's LoRA",
        "  affinity only steers once a replica's batch slots are full, which never happens at these maxLoras",
        "  (docs/SCALE.md), so behind it every replica still sees every adapter.",
        "- The replica count does not change: residency and routing move bytes, not compute.",
        "",
    ]
    return lines


def _gb(n: float) -> str:
    if n < 1e9:
        return f"{n / 1e6:.0f} MB"
    return f"{n / 1e9:.1f} GB" if n < 1e10 else f"{n / 1e9:,.0f} GB"


def _plot(args, mix: Workload, common: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tenants = [100, 200, 500, 1_000, 2_000, 5_000, 10_000]
    fig, ax = plt.subplots(figsize=(7, 4))
    for gpu in ("H100", "A100", "L4"):
        ax.plot(tenants, [plan(t, args.rate_per_tenant, gpu, mix, **common).replicas for t in tenants],
                marker="o", label=GPUS[gpu].name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tenants")
    ax.set_ylabel("replicas (GPUs)")
    ax.set_title(f"Mistral-7B + one adapter per tenant, {args.rate_per_tenant} req/s each, p95 {args.p95:g} s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(PLOT, dpi=120)


if __name__ == "__main__":
    main()
