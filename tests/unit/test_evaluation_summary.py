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
