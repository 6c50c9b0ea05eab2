"""Scoring of evaluation outcomes on hand-made cases."""

from __future__ import annotations

from service.evaluation.runner import Outcome, summarize


def test_summary_counts_exact_valid_violations_cuts_and_errors():
    outcomes = [
        Outcome(gold="SELECT a FROM t", code="SELECT a FROM t", valid=True, finish_reason="stop", latency_s=1.0),
        Outcome(gold="SELECT a FROM t", code="SELECT b FROM t", valid=True, finish_reason="stop", latency_s=2.0),
        Outcome(gold="SELECT a FROM t", code="SELECT a FR", valid=False, finish_reason="length", latency_s=3.0),
        Outcome(gold="SELECT a FROM t", code="SELECT a FROM t;", valid=False, finish_reason="stop", latency_s=4.0),
        Outcome(gold="SELECT a FROM t", code="", valid=False, finish_reason="error", latency_s=0.0, error="404"),
    ]
    s = summarize(outcomes)
    assert s.n == 5
    assert s.exact_match == 1 / 5
    assert s.valid_rate == 2 / 5
    assert s.grammar_violation_rate == 1 / 5
    assert s.cut_rate == 1 / 5
    assert s.error_rate == 1 / 5
    assert s.p50_s == 2.5 and s.p95_s == 4.0  # errors have no latency


def test_exact_match_ignores_surrounding_whitespace_only():
    assert Outcome("a\nb", "a\nb\n", True, "stop", 0).exact
    assert not Outcome("a\nb", "a b", True, "stop", 0).exact


def test_summary_with_the_grammar_scores_similarity_and_hallucinations():
    from service.config import Settings
    from service.grammars import GrammarRegistry

    flow = GrammarRegistry(Settings().grammars_dir).load().get("flow")
    gold = 'when schedule.hourly()\nthen log.write(message: "tick")'
    outcomes = [
        Outcome(gold, gold, True, "stop", 1.0),
        Outcome(gold, 'when schedule.hourly()\nthen logger.write(msg: "tick")', False, "stop", 1.0),
    ]
    s = summarize(outcomes, flow)
    assert s.exact_match == 0.5 and 0.5 < s.string_similarity < 1.0 and s.tree_similarity == 0.5
    assert s.name_hallucination_rate == 1 / 4 and s.key_hallucination_rate == 1 / 2


def test_report_has_a_table_per_test_set_a_chart_and_json(tmp_path):
    from service.evaluation.runner import RunConfig
    from service.evaluation.suites import Case, write_report

    s = summarize([Outcome("a", "a", True, "stop", 1.0)])
    s.string_similarity = s.tree_similarity = 1.0
    s.name_hallucination_rate = s.key_hallucination_rate = 0.0
    results = [(Case(RunConfig("base", "flow"), "flow", 1), s), (Case(RunConfig("base", "sql"), "sql", 1), s)]
    write_report(results, title="t", command="nl2dsl eval", markdown=tmp_path / "EVAL.md")
    text = (tmp_path / "EVAL.md").read_text()
    assert "## Test set `flow`" in text and "## Test set `sql`" in text and "nl2dsl eval" in text
    assert (tmp_path / "EVAL.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "EVAL.json").exists()


def test_bar_section_reports_met_and_not_met_per_tenant():
    from dataclasses import replace

    from service.evaluation.runner import RunConfig
    from service.evaluation.suites import Case, bar_lines

    base = summarize([Outcome("a", "a", True, "stop", 1.0)])

    def case(label: str, test_set: str, exact: float):
        return Case(RunConfig(label, "flow"), test_set, 1), replace(base, exact_match=exact)

    results = [case("flow-general", "flow", 0.85),
               case("flow-general on contoso", "flow/contoso", 0.0), case("contoso", "flow/contoso", 0.7),
               case("contoso on general flow", "flow", 0.86),
               case("flow-general on fabrikam", "flow/fabrikam", 0.0), case("fabrikam", "flow/fabrikam", 0.6),
               case("fabrikam on general flow", "flow", 0.80)]
    text = "\n".join(bar_lines(results))
    assert "exact match 0.850 (bar >= 0.8: met)" in text
    assert "- contoso: own test set 0.700" in text and text.split("- contoso")[1].split("\n")[0].endswith(": met.")
    assert "NOT met" not in text.split("- fabrikam")[0]
    assert text.split("- fabrikam")[1].split("\n")[0].endswith(": NOT met.")  # 0.05 below flow-general
    assert bar_lines(results[1:]) == []  # no flow-general run, no bar
    # The matrix also runs every configuration without the grammar: the bar reads the constrained run.
    free = Case(RunConfig("flow-general", "flow", constrained=False), "flow", 1), replace(base, exact_match=0.1)
    assert "exact match 0.850 (bar >= 0.8: met)" in "\n".join(bar_lines([*results, free]))


def test_configurations_scored_on_the_same_pairs_are_compared_pair_by_pair(tmp_path):
    """``nl2dsl eval --examples 0,3``: the report says which pairs each shape got right and the other did not,
    and the exact McNemar p-value, not only two rates whose intervals overlap."""
    from service.evaluation.runner import RunConfig
    from service.evaluation.suites import Case, write_report

    def scored(hits):
        s = summarize([Outcome("a", "a" if hit else "b", True, "stop", 1.0) for hit in hits])
        s.string_similarity = s.tree_similarity = s.name_hallucination_rate = s.key_hallucination_rate = 0.0
        return s

    alone = scored([True, True, False, False, False, True])
    with_examples = scored([True, False, True, True, True, True])  # 3 won, 1 lost
    other_size = scored([True, True])
    results = [(Case(RunConfig("logq", "logq"), "fresh.jsonl", None), alone),
               (Case(RunConfig("logq, 3 examples", "logq", examples=3), "fresh.jsonl", None), with_examples),
               (Case(RunConfig("logq, 8 examples", "logq", examples=8), "fresh.jsonl", 2), other_size)]
    write_report(results, title="t", command="nl2dsl eval", markdown=tmp_path / "EVAL.md")
    text = (tmp_path / "EVAL.md").read_text()
    assert "'logq, 3 examples' against 'logq' (exact match): 3 pairs won, 1 lost, exact McNemar p = 0.62" in text
    assert "'logq, 8 examples' against" not in text  # other pairs: no paired test
