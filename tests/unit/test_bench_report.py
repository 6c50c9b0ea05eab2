"""docs/BENCHMARKS.md is made from the benchmarks' results alone (bench/report.py): one verdict per goal, every
number from a results file, and the committed page is what the committed results make."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from bench import report
from bench.results import RESULTS_DIR, load_all

_ratio = st.floats(min_value=0.01, max_value=99, allow_nan=False)


def _result(bench: str, comparisons: list[dict]) -> dict:
    return {"bench": bench, "command": f"python -m bench.{bench}", "machine": "x86_64, 2 CPUs",
            "finished": "2026-12-07 20:00", "comparisons": comparisons, "facts": {}}


def _comparison(name: str, value: float, baseline: float, goal: str) -> dict:
    return {"group": "g", "name": name, "value": value, "baseline": baseline, "unit": "tokens/s",
            "versus": ["a", "b"], "goal": goal, "higher_is_better": True, "note": "", "ratio": value / baseline}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(_ratio, _ratio, st.sampled_from(["", ">= 0.9", "<= 1.5", "> 1"])), min_size=1,
                max_size=6))
def test_each_goal_gets_one_row_with_its_latest_ratio_and_verdict(cases):
    """Property: the goals table has exactly one row per comparison with a goal, its ratio as the data says, and
    "yes" exactly when the ratio meets the goal; a comparison without a goal is not in it."""
    comparisons = [_comparison(f"case {i}", value, baseline, goal) for i, (value, baseline, goal) in enumerate(cases)]
    page = report.render([_result("engine", comparisons)])
    goals = page.split("## Goals", 1)[1].split("## ", 1)[0]
    rows = [line for line in goals.splitlines() if line.startswith("| case ")]
    with_goal = [c for c in comparisons if c["goal"]]
    assert len(rows) == len(with_goal)
    for row, c in zip(rows, with_goal, strict=True):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1] == f"{c['ratio']:.3f}"
        op, bound = c["goal"].split()
        met = {">=": c["ratio"] >= float(bound), "<=": c["ratio"] <= float(bound), ">": c["ratio"] > float(bound)}[op]
        assert cells[2] == ("yes" if met else "**no**")


def test_the_report_code_types_no_figures():
    """With results that hold no measurement, the page holds no number but the run's date and machine: every
    figure on it comes from the results, none from the report's code."""
    page = report.render([_result("engine", [])]).split("## Earlier runs")[0]  # file names of earlier runs
    page = page.replace("2026-12-07 20:00", "").replace("x86_64, 2 CPUs", "").replace("SmolLM2-135M-Instruct", "")
    assert not re.findall(r"\d", page.replace("BENCHMARKS", ""))


def test_the_committed_page_is_what_the_committed_results_make():
    assert list(RESULTS_DIR.glob("*.json")), "docs/bench/results/ is empty: run make bench"
    assert (report.DOC.read_text()) == report.render(load_all())


def test_a_marked_figure_is_filled_from_the_results_and_an_unknown_one_is_named():
    results = [_result("engine", [_comparison("grammar", 97.0, 100.0, ">= 0.95")])]
    text = "kept <!--bench:engine/grammar: a vs b:ratio-->0.50<!--/bench--> of it"
    assert report.fill_figures(text, results) == "kept <!--bench:engine/grammar: a vs b:ratio-->0.97<!--/bench--> of it"
    try:
        report.fill_figures("<!--bench:engine/nope: a vs b:value-->1<!--/bench-->", results)
    except KeyError as exc:
        assert "nope" in str(exc)
    else:
        raise AssertionError("an unknown figure was left as it was")


def test_the_readmes_figures_are_the_results():
    """Every figure README.md takes from a benchmark is marked, and is what the committed results say."""
    readme = (report.ROOT / "README.md").read_text()
    assert report._FIGURE.search(readme), "README.md marks no benchmark figure"
    assert report.fill_figures(readme, load_all()) == readme
