"""The onboarding report: Markdown for a person, a PNG chart, and JSON with every number.

Per configuration: exact match with its 95% interval and sample size, tree similarity, valid rate, outputs that
finished by themselves and do not parse, p50/p95 latency; the training curve; the gate's verdict and why.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from service.evaluation.runner import RunConfig, Summary, format_rate

__all__ = ["Report", "report_json", "write_report"]


@dataclass
class Report:
    name: str
    dsl: str
    dataset: dict[str, Any]
    #: (configuration, summary) in the order they were measured: baselines first.
    rows: list[tuple[RunConfig, Summary]] = field(default_factory=list)
    #: Held-out teacher-forced exact match during training: (step, score).
    curve: list[tuple[int, float]] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    published: bool = False
    verdict: str = ""
    command: str = ""
    usage: str = ""
    stages: list[tuple[str, float]] = field(default_factory=list)
    #: Every configuration's output limit (half again the longest held-out code, at most --max-tokens).
    max_tokens: int = 0
    #: What the baselines' scores depend on (``key``) and how long scoring them took (``seconds``): a re-run
    #: with the same key keeps them.
    baseline: dict[str, Any] = field(default_factory=dict)
    #: The budget and the whole run's seconds (0 until it ends); what the run left out, and why.
    budget_s: float = 0.0
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: The adapter's confidence calibration and how well it holds (service.evaluation.confidence): raw and
    #: calibrated reliability on the held-out answers (each half with a calibration fitted on the other).
    calibration: dict[str, Any] = field(default_factory=dict)


_COLUMNS = ("configuration", "constrained", "n", "exact match", "canonical match", "semantic match", "tree sim.",
            "valid", "finished, not parsed", "p50 s", "p95 s")


def _cells(config: RunConfig, s: Summary) -> list[str]:
    return [config.label, "yes" if config.constrained else "no", str(s.n),
            format_rate(s.exact_match, s.exact_match_ci), format_rate(s.canonical_match, s.canonical_match_ci),
            format_rate(s.semantic_match, s.semantic_match_ci), f"{s.tree_similarity or 0:.3f}",
            f"{s.valid_rate:.3f}", f"{s.grammar_violation_rate:.3f}", f"{s.p50_s:.2f}", f"{s.p95_s:.2f}"]


def write_report(report: Report, folder: Path) -> list[Path]:
    """``ONBOARDING.md``, ``.png`` and ``.json`` in ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    markdown, chart, data = folder / "ONBOARDING.md", folder / "ONBOARDING.png", folder / "ONBOARDING.json"
    d = report.dataset
    lines = [
        f"# Onboarding `{report.dsl}` -> adapter `{report.name}`", "",
        f"**{'Published' if report.published else 'Not published'}**: {report.verdict}", "",
        "Produced by:", "", f"```sh\n{report.command}\n```", "",
        f"Dataset: {d['train']} pairs to train on, {d['heldout']} held out (never trained on), {d['rejected']} "
        f"rejected, {d['duplicates']} duplicates and {d['conflicting']} conflicting pairs dropped.", "",
        "## Held-out scores", "",
        *([f"Greedy decoding; every output limited to {report.max_tokens} tokens.", ""] if report.max_tokens else []),
        *([f"Judged by {report.rows[0][1].judged_by} match (the strongest score the DSL declares); each score "
           "with its 95% interval.", ""] if report.rows else []),
        "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS),
    ]
    lines += ["| " + " | ".join(_cells(config, s)) + " |" for config, s in report.rows]
    if report.training:
        t = report.training
        lines += ["", "## Training", "",
                  f"{t.get('steps')} steps in {t.get('wall_time_s', 0):.0f} s ({t.get('tokens_per_s', 0):.0f} "
                  f"tokens/s); stopped: {t.get('stopped') or 'planned steps done'}; weights of step "
                  f"{t.get('best_step')}.", "", *_example_lines(t),
                  "| step | held-out teacher-forced exact match |", "|---|---|"]
        lines += [f"| {step} | {score:.3f} |" for step, score in report.curve]
    if report.calibration:
        lines += ["", *confidence_lines(report.calibration)]
    if report.stages:
        lines += ["", "## Stages", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {stage} | {seconds:.0f} |" for stage, seconds in report.stages]
    if report.wall_s:
        lines += ["", f"The whole run: {report.wall_s:.0f} s, for a budget of {report.budget_s:.0f} s."]
    lines += ["", *(f"- {note}" for note in report.notes)] if report.notes else []
    if report.usage:
        lines += ["", "## Use it", "", f"```sh\n{report.usage}\n```"]
    lines += ["", f"![held-out exact match per configuration and the training curve]({chart.name})", ""]
    markdown.write_text("\n".join(lines))
    _plot(report, chart)
    data.write_text(json.dumps(report_json(report), indent=1))
    return [markdown, chart, data]


def confidence_lines(calibration: dict[str, Any]) -> list[str]:
    """The confidence section: calibration error, and what answers above a threshold are worth."""
    lines = ["## Confidence", "",
             f"Calibrated on the held-out answers of the best configuration ({calibration['score']} match; each half "
             "scored with the calibration fitted on the other half).", "",
             "| confidence | calibration error | answers at or above 0.5 (share, right) | 0.8 | 0.9 |",
             "|---|---|---|---|---|"]
    for name in ("raw", "calibrated"):
        r = calibration[name]
        cells = [f"{share:.2f}, {'-' if right is None else f'{right:.2f}'}" for _, share, right in r["above"]]
        lines.append(f"| {name} | {r['ece']:.3f} | " + " | ".join(cells) + " |")
    return lines


def report_json(report: Report) -> dict[str, Any]:
    """Every number of the report, as ``ONBOARDING.json`` and the run's status hold it."""
    return {**{k: v for k, v in asdict(report).items() if k != "rows"},
            "rows": [{"config": asdict(c), "summary": asdict(s)} for c, s in report.rows]}


def _plot(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.35 * max(4, len(report.rows)) + 1.8))
    labels = [f"{c.label}{'' if c.constrained else ' (free)'}" for c, _ in report.rows]
    exact = [s.exact_match for _, s in report.rows]
    errors = [[s.exact_match - s.exact_match_ci[0] for _, s in report.rows],
              [s.exact_match_ci[1] - s.exact_match for _, s in report.rows]]
    ys = list(range(len(report.rows)))
    left.barh(ys, exact, xerr=errors, capsize=3)
    left.set_yticks(ys, labels, fontsize=8)
    left.invert_yaxis()
    left.set_xlim(0, 1)
    left.set_title("held-out exact match (95% interval)")
    right.set_title("held-out teacher-forced exact match")
    if len(report.curve) >= 2:
        steps, scores = zip(*report.curve, strict=True)
        right.plot(steps, scores, marker="o")
        right.set_ylim(0, 1)
        right.set_xlabel("training step")
    else:  # one point is a number, not a chart with an axis around one step
        right.axis("off")
        said = (f"{report.curve[0][1]:.3f}\nat step {report.curve[0][0]}" if report.curve
                else "no held-out check\nduring training")
        right.text(0.5, 0.5, said, ha="center", va="center", fontsize=16, transform=right.transAxes)
    fig.suptitle(f"{report.dsl}: {report.name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _example_lines(training: dict[str, Any]) -> list[str]:
    """What the training prompts carried, and the measurement that decided it."""
    losses = training.get("example_losses")
    if not losses:
        return []
    from service.training.shots import INFORMATIVE, SHARE, taken_off

    without, with_examples = losses
    return [f"Retrieved examples took {taken_off(without, with_examples):.0%} off the base model's loss on held-out "
            f"answers ({without:.3f} -> {with_examples:.3f}): {training.get('example_share', 0):g} of the training "
            f"prompts carried them (at least {INFORMATIVE:.0%} off: {SHARE:g}; less: none).", ""]
