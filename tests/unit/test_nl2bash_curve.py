"""The NL2Bash curve's points, read from an onboarding run's folder: the configuration onboarding serves, its
scores, NL2Bash's template match from the answers the run kept, and what a run that published nothing left."""

from __future__ import annotations

import json

from bench.nl2bash_curve import point

GOLDS = ["ls -l /var", "find . -name '*.txt'", "wc -l notes"]


def _row(label: str, adapter: str, examples: int, outputs: list[str], judged: float) -> dict:
    return {"config": {"label": label, "adapter": adapter, "examples": examples, "constrained": True},
            "summary": {"n": 3, "exact_match": judged, "exact_match_ci": [0.0, 1.0], "judged_by": "canonical",
                        "canonical_match": judged, "canonical_match_ci": [0.0, 1.0], "outputs": outputs}}


def _run(tmp_path, rows: list[dict], **report) -> None:
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "ONBOARDING.json").write_text(json.dumps({"rows": rows, **report}))
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps({"text": "t", "code": c}) + "\n" for c in GOLDS))


def test_a_point_is_the_served_configuration_with_its_template_match(tmp_path):
    outputs = ["ls -l /tmp", "find . -name x", "wc -c notes"]  # arguments differ twice, a flag once
    _run(tmp_path, [_row("base + 3 examples", "base", 3, ["ls", "ls", "ls"], 0.0),
                    _row("adapter", "bash-candidate", 0, outputs, 0.0),
                    _row("adapter + 3 examples", "bash-candidate", 3, GOLDS, 1.0)],
         published=True, training={"steps": 10, "wall_time_s": 20.0, "example_share": 0.0}, wall_s=100)
    got = point(tmp_path)
    assert got["served"] == "adapter + 3 examples" and got["exact"] == 1.0 and got["template"] == 1.0
    assert got["baseline_exact"] == 0.0 and got["step_s"] == 2.0 and got["outcome"] == "published"


def test_the_template_match_counts_answers_that_differ_only_in_arguments(tmp_path):
    outputs = ["ls -l /tmp", "find . -name x", "wc -c notes"]
    _run(tmp_path, [_row("adapter", "bash-candidate", 0, outputs, 0.0)], published=True)
    assert abs(point(tmp_path)["template"] - 2 / 3) < 1e-9


def test_a_run_that_published_nothing_says_why_and_keeps_the_baseline(tmp_path):
    _run(tmp_path, [_row("base", "base", 0, ["ls"] * 3, 0.0), _row("base + 3 examples", "base", 3, GOLDS, 1 / 3)],
         published=False, verdict="training reached 71 of its 2000 planned steps; the baseline stays")
    got = point(tmp_path)
    assert got["outcome"] == "not published" and "exact" not in got and got["baseline_exact"] == 1 / 3
    assert got["verdict"] == "training reached 71 of its 2000 planned steps"
    assert point(tmp_path / "missing") == {"outcome": "no report (refused before it scored anything)"}
