"""Every grammar the service accepts can be onboarded: the dataset check, the scores and the report, over the
installed lark and outlines grammars and grammars written with each construct (issue 28: an absent ``[x]``
once crashed the baseline stage). No model: the outputs scored are other pairs' codes."""

from __future__ import annotations

import importlib.resources
import json

import pytest

from service.evaluation.runner import Outcome, RunConfig, summarize
from service.grammars import compile_grammar
from service.onboarding.dataset import build_dataset
from service.onboarding.report import Report, write_report


def _installed(package: str, name: str) -> str:
    return (importlib.resources.files(package) / "grammars" / name).read_text()


#: (name, grammar, codes that parse with it): every construct a team may write, and grammars others wrote.
SUITE = [
    ("bracket-optional", 'start: entry (";" entry)* [";" where]\nentry: /[a-z]+/\nwhere: "at " /[a-z]+/\n',
     ["milk;eggs", "milk;eggs;at shop", "bread", "tea;at market"]),
    ("inlined-rules", '?start: sum\n?sum: NUMBER | sum "+" NUMBER\n%import common.NUMBER\n%ignore " "\n',
     ["1", "1 + 2", "3+4+5"]),
    ("aliases", 'start: item+\nitem: "buy " WORD ";" -> buy\n    | "sell " WORD ";" -> sell\n'
                '%import common.WORD\n', ["buy milk;", "sell car;buy bread;", "sell house;"]),
    ("outlines-json", _installed("outlines", "json.lark"), ['{"a": [1, 2]}', "[true, null]", '"x"', "3.5"]),
    ("outlines-arithmetic", _installed("outlines", "arithmetic.lark"), ["1 + 2 * 3", "(4 - 1) / 2", "7"]),
]
#: lark's own python.lark and lark.lark are refused at upload (templates; a look-ahead), with the construct named:
#: tests/unit/test_publishing.py. What the service refuses is never onboarded.


@pytest.mark.parametrize("name, text, codes", SUITE, ids=[name for name, _, _ in SUITE])
def test_a_grammar_the_service_accepts_goes_through_the_dataset_the_scores_and_the_report(tmp_path, name, text,
                                                                                            codes):
    grammar = compile_grammar(name, text, origin="upload")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"text": f"request {i}", "code": codes[i % len(codes)]}) + "\n"
                             for i in range(30)))
    dataset = build_dataset(grammar, pairs, min_heldout=5)
    assert not dataset.rejects and dataset.heldout
    outcomes = [Outcome(row.code, codes[(i + 1) % len(codes)] if i % 2 else row.code, True, "stop", 0.1)
                for i, row in enumerate(dataset.heldout)]
    summary = summarize(outcomes, grammar)
    assert 0 < summary.exact_match < 1 and 0 < summary.tree_similarity <= 1
    report = Report(name=name, dsl=name, dataset=dataset.summary(), command="nl2dsl onboard",
                    rows=[(RunConfig("base", name, adapter="base"), summary)], curve=[(2, 0.5)],
                    published=False, verdict="below the baseline")
    written = write_report(report, tmp_path / "report")
    assert all(path.stat().st_size > 0 for path in written)
