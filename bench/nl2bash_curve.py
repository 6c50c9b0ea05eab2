"""Held-out quality against CPU-minutes on NL2Bash: ``python -m bench.nl2bash_curve --nl2bash DIR``.

Onboards NL2Bash (requests people wrote, with their one-line bash commands; not part of this project) as a team
would, once per budget (``--budgets 10,30,60``, minutes of this machine's CPU), each run from scratch in a
folder of its own, and reads each run's report. ``--before REF`` runs the same budgets with the pipeline of an
older commit too (a git worktree of it, the same virtualenv), so the two curves are measured on the same machine
the same way. Each point is the configuration onboarding chose to serve, on the run's 100 held-out pairs:

- exact match, canonical match (the DSL's strongest score: the parse trees with literals normalized);
- NL2Bash's template match (the paper's second measure: arguments replaced, utilities and flags kept;
  :func:`service.demo_data.nl2bash.template`), where the run kept its outputs.

Writes docs/onboarding/nl2bash-curve.json (points kept across invocations, one per pipeline and budget),
docs/onboarding/nl2bash-curve.md (the table and the commands) and docs/onboarding/nl2bash-curve.png. A 30-minute
point takes about 32 minutes: run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.results import ROOT, progress

COMMAND = "python -m bench.nl2bash_curve"
OUT = ROOT / "docs" / "onboarding" / "nl2bash-curve"
GRAMMAR = Path("data") / "onboarding" / "bash" / "bash.lark"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--nl2bash", type=Path, help="NL2Bash's data/bash folder (all.nl, all.cm)")
    parser.add_argument("--budgets", default="10,30,60", help="minutes, comma-separated (default 10,30,60)")
    parser.add_argument("--before", metavar="REF", help="also run the pipeline of this git commit")
    parser.add_argument("--only-before", action="store_true", help="run only the --before pipeline")
    parser.add_argument("--work", type=Path, default=ROOT / "onboarding" / "nl2bash-curve",
                        help="where the runs' folders go (default onboarding/nl2bash-curve)")
    parser.add_argument("--plot", action="store_true", help="only write the table and plot from the points kept")
    parser.add_argument("--record", nargs=4, metavar=("PIPELINE", "COMMIT", "MINUTES", "FOLDER"),
                        help="keep the point of a run made by hand (its folder, or its report's)")
    args = parser.parse_args(argv)
    points = _load()
    if args.record:
        label, commit, minutes, folder = args.record
        points[f"{label}-{minutes}"] = {"pipeline": label, "commit": commit, "minutes": int(minutes),
                                        **point(Path(folder))}
    elif not args.plot:
        if args.nl2bash is None:
            parser.error("--nl2bash is required to run (or --plot)")
        pairs = args.work / "pairs.jsonl"
        _run([sys.executable, "-m", "service.cli", "data", "--nl2bash", str(args.nl2bash), "--out", str(pairs)], ROOT)
        pipelines = ([] if args.only_before else [("after", ROOT, _commit(ROOT))])
        if args.before:
            pipelines.append(("before", _worktree(args.before, args.work), args.before))
        for label, root, commit in pipelines:
            for minutes in (int(m) for m in args.budgets.split(",")):
                work = args.work / f"{label}-{minutes}m"
                progress(f"{label} pipeline ({commit}), {minutes} minutes: {work}")
                shutil.rmtree(work, ignore_errors=True)
                command = [sys.executable, "-m", "service.cli", "onboard", "--grammar", str(root / GRAMMAR),
                           "--pairs", str(pairs.resolve()), "--name", "bash", "--budget", f"{minutes}m",
                           "--work-dir", str(work.resolve())]
                _run(command, root, check=False)  # a refused or unpublished run is a point too
                points[f"{label}-{minutes}"] = {"pipeline": label, "commit": commit, "minutes": minutes,
                                                 **point(work)}
                _save(points)
    _save(points)


def point(work: Path) -> dict[str, Any]:
    """One run's point from its folder: the served configuration's scores, training and time."""
    found = [path for path in (work / "report" / "ONBOARDING.json", work / "ONBOARDING.json") if path.exists()]
    try:
        report = json.loads(found[0].read_text())
    except (IndexError, OSError, ValueError):
        return {"outcome": "no report (refused before it scored anything)"}
    rows = [row for row in report.get("rows", []) if row["config"]["constrained"]]
    adapters = [row for row in rows if row["config"]["adapter"] != "base"]
    bases = [row["summary"]["exact_match"] for row in rows if row["config"]["adapter"] == "base"]
    training = report.get("training") or {}
    facts = {"outcome": "published" if report.get("published") else "not published",
             "verdict": (report.get("verdict") or "").split(";")[0][:160],
             "baseline_exact": max(bases) if bases else None,
             "wall_s": report.get("wall_s"), "stages": dict(report.get("stages") or []),
             "steps": training.get("steps"), "tokens_per_s": training.get("tokens_per_s"),
             "step_s": (training["wall_time_s"] / training["steps"]) if training.get("steps") else None,
             "example_share": training.get("example_share")}
    if not adapters:
        return facts
    served = max(adapters, key=lambda row: (_judged(row["summary"]), row["config"]["examples"] == 0))
    summary = served["summary"]
    return {**facts, "served": served["config"]["label"], "n": summary["n"],
            "exact": summary["exact_match"], "exact_ci": summary["exact_match_ci"],
            "canonical": summary.get("canonical_match"), "canonical_ci": summary.get("canonical_match_ci"),
            "template": _template_rate(work, summary.get("outputs") or [])}


def _judged(summary: dict[str, Any]) -> float:
    return summary.get(f"{summary.get('judged_by', 'exact')}_match") or 0.0


def _template_rate(work: Path, outputs: list[str]) -> float | None:
    """The share of outputs whose template is the gold command's (None: the run kept no outputs)."""
    from service.demo_data.nl2bash import template
    from service.grammars import compile_grammar

    if not outputs or not (work / "heldout.jsonl").exists():
        return None
    golds = [json.loads(line)["code"] for line in (work / "heldout.jsonl").read_text().splitlines() if line]
    if len(outputs) != len(golds):
        return None
    grammar = compile_grammar("bash", (ROOT / GRAMMAR).read_text(), origin="upload")
    hits = 0
    for output, gold in zip(outputs, golds, strict=True):
        got, want = grammar.parse(output), grammar.parse(gold)
        hits += bool(got.valid and want.valid and template(got.tree) == template(want.tree))
    return hits / len(golds)


def _run(command: list[str], cwd: Path, *, check: bool = True) -> None:
    progress(" ".join(command))
    subprocess.run(command, cwd=cwd, check=check)


def _commit(root: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip()


def _worktree(ref: str, work: Path) -> Path:
    """A checkout of ``ref`` beside the runs (made once): the older pipeline, run with this virtualenv."""
    folder = (work / f"pipeline-{ref}").resolve()
    if not folder.exists():
        work.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(folder), ref], cwd=ROOT, check=True)
    return folder


def _load() -> dict[str, dict[str, Any]]:
    try:
        return json.loads(OUT.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}


def _save(points: dict[str, dict[str, Any]]) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps(points, indent=1, sort_keys=True) + "\n")
    OUT.with_suffix(".md").write_text(_table(points))
    if any(p.get("exact") is not None for p in points.values()):
        _plot(points)


def _table(points: dict[str, dict[str, Any]]) -> str:
    def rate(p: dict[str, Any], key: str) -> str:
        value, ci = p.get(key), p.get(f"{key}_ci")
        if value is None:
            return "-"
        return f"{value:.3f} ({ci[0]:.2f}-{ci[1]:.2f})" if ci else f"{value:.3f}"

    lines = ["# NL2Bash: held-out quality against CPU-minutes", "",
             f"Produced by `{COMMAND} --nl2bash <NL2Bash's data/bash> --before <commit>` (one onboarding run per "
             "budget and pipeline, on this 2-core CPU; `--plot` redraws from the points kept). Each row is the "
             "configuration onboarding chose to serve, on the run's 100 held-out pairs; 95% intervals.", "",
             "| pipeline | minutes | outcome | served | exact | canonical | template | steps | s/step | "
             "examples in training | whole run s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    ordered = sorted(points.values(), key=lambda p: (p["pipeline"] != "before", p["minutes"]))
    for p in ordered:
        step_s = f"{p['step_s']:.1f}" if p.get("step_s") else "-"
        share = "-" if p.get("example_share") is None else f"{p['example_share']:g}"
        lines.append(f"| {p['pipeline']} ({p['commit']}) | {p['minutes']} | {p['outcome']} | {p.get('served', '-')} "
                     f"| {rate(p, 'exact')} | {rate(p, 'canonical')} | {rate(p, 'template')} | "
                     f"{p.get('steps') or '-'} | {step_s} | {share} | {p.get('wall_s') or 0:.0f} |")
    lines += ["", "Runs that published nothing, and why (the baseline, the base model, stays):", ""]
    lines += [f"- {p['pipeline']}, {p['minutes']} minutes: {p.get('verdict') or p['outcome']}" for p in ordered
              if p["outcome"] != "published"]
    return "\n".join(lines) + "\n\n![held-out quality against CPU-minutes](nl2bash-curve.png)\n"


def _plot(points: dict[str, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for pipeline, colour in (("before", "tab:gray"), ("after", "tab:blue")):
        for key, style in (("exact", "o-"), ("canonical", "s--"), ("template", "^:")):
            xs = sorted((p["minutes"], p[key]) for p in points.values()
                        if p["pipeline"] == pipeline and p.get(key) is not None)
            if xs:
                ax.plot(*zip(*xs, strict=True), style, color=colour, label=f"{pipeline}: {key}")
    base = [p["baseline_exact"] for p in points.values() if p.get("baseline_exact") is not None]
    if base:
        ax.axhline(max(base), color="tab:red", linestyle=":", label="base model, best baseline: exact")
    ax.set_xlabel("budget (minutes of a 2-core CPU, the whole run)")
    ax.set_ylabel("held-out match (100 pairs)")
    ax.set_title("NL2Bash onboarding: quality per CPU-minute")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT.with_suffix(".png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
