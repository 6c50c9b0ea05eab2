"""Onboarding without the engine: the dataset a team's pairs become, the gate, the budget parser, the report."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.cli import main
from service.errors import RequestInvalid
from service.evaluation.runner import Outcome, RunConfig, summarize
from service.grammars import compile_grammar
from service.onboarding import build_dataset
from service.onboarding.pipeline import OnboardConfig, _baseline_key, _gate, _kept_baselines, onboard
from service.onboarding.report import Report, write_report

# A unit-conversion DSL nobody here wrote a generator for, with `*`, `%ignore` and an import.
GRAMMAR = 'start: conversion (";" conversion)*\nconversion: NUMBER UNIT "->" UNIT\nUNIT: /[a-z]+/\n' \
          '%import common.NUMBER\n%import common.WS\n%ignore WS\n'


def _pairs(tmp_path, rows):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_pairs_are_checked_by_line_deduplicated_and_split_with_a_fixed_seed(tmp_path):
    grammar = compile_grammar("units", GRAMMAR, origin="upload")
    good = [{"text": f"convert {i} km to miles", "code": f"{i} km -> mi"} for i in range(40)]
    rows = [*good[:20], good[3], {"text": "Convert 3 KM to miles", "code": "3 km -> mi"},
            {"text": "convert 5 km to miles", "code": "5 km -> yd"}, "not json", {"text": "x"},
            {"text": "broken", "code": "km -> -> mi"}, *good[20:]]
    path = _pairs(tmp_path, rows)
    dataset = build_dataset(grammar, path, heldout=0.25, seed=7)
    assert (dataset.duplicates, dataset.conflicting) == (2, 1)  # same text (any case) and code; same text, new code
    assert [r.line for r in dataset.rejects] == [24, 25, 26]
    broken = dataset.rejects[-1]
    assert "does not parse" in broken.message and (broken.code_line, broken.code_column) == (1, 1)
    assert len(dataset.heldout) == 10 and len(dataset.train) == 30
    assert not {e.text for e in dataset.heldout} & {e.text for e in dataset.train}  # held out means held out
    again = build_dataset(grammar, path, heldout=0.25, seed=7)
    assert again.heldout == dataset.heldout


def test_a_teams_own_held_out_file_is_scored_on_and_its_requests_never_trained_on(tmp_path):
    grammar = compile_grammar("units", GRAMMAR, origin="upload")
    train = _pairs(tmp_path, [{"text": f"convert {i} km to miles", "code": f"{i} km -> mi"} for i in range(30)])
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in [
        {"text": "Convert 4 km to miles", "code": "4 km -> mi"},  # also in the training file: kept out of training
        *({"text": f"{i} kg in pounds", "code": f"{i} kg -> lb"} for i in range(8)),
        {"text": "broken", "code": "kg -> -> lb"}]))
    dataset = build_dataset(grammar, train, max_heldout=6, seed=1, test_path=test)
    assert len(dataset.heldout) == 6 and {e.text for e in dataset.heldout} <= {
        "Convert 4 km to miles", *(f"{i} kg in pounds" for i in range(8))}
    asked = {e.text.lower() for e in dataset.heldout}
    assert not asked & {e.text.lower() for e in dataset.train}
    assert len(dataset.train) == 30 - ("convert 4 km to miles" in asked)
    assert [r.message.split(":")[0] for r in dataset.rejects] == ["held-out file"]


def test_too_few_usable_pairs_stop_onboarding_with_the_rejects(tmp_path):
    grammar = compile_grammar("units", GRAMMAR, origin="upload")
    path = _pairs(tmp_path, [{"text": "a", "code": "1 km -> mi"}, {"text": "b", "code": "nope"}])
    with pytest.raises(RequestInvalid) as stopped:
        build_dataset(grammar, path)
    assert "1 usable pairs" in stopped.value.message and stopped.value.detail[0]["line"] == 2


def _summary(hits: int, n: int = 10, *, violations: int = 0):
    outcomes = [Outcome("a", "a" if i < hits else "b", i >= violations, "stop", 1.0) for i in range(n)]
    return summarize(outcomes)


def test_the_gate_publishes_only_a_clear_win_with_every_finished_output_parsing():
    base = [(RunConfig("base", "u", adapter="base"), _summary(3, 40)),
            (RunConfig("base + 3", "u", adapter="base", examples=3), _summary(5, 40))]
    win = [(RunConfig("adapter", "u", adapter="c"), _summary(20, 40)),
           (RunConfig("adapter free", "u", adapter="c", constrained=False), _summary(1, 40, violations=5))]
    published, why = _gate(base + win, margin=0.1, alpha=0.05)
    assert published and "0.500" in why and "base + 3" in why  # the unconstrained run's failures do not count
    assert "exact McNemar" in why and "15 pairs won, 0 lost" in why and "p = 6.1e-05" in why
    assert not _gate(base + win, margin=0.4, alpha=0.05)[0]  # a gain of 0.375 < 0.4
    broken = [(RunConfig("adapter", "u", adapter="c"), _summary(30, 40, violations=1))]
    published, why = _gate(base + broken, margin=0.1, alpha=0.05)
    assert not published and "did not parse" in why
    # A configuration whose requests failed (429s, a dead engine) was not measured: nothing is published on it.
    failed = Outcome("a", "", False, "error", 0.0, error="429 rate_limited: too many requests")
    errored = [(RunConfig("adapter free", "u", adapter="c", constrained=False), summarize([failed] * 40))]
    published, why = _gate(base + win + errored, margin=0.1, alpha=0.05)
    assert not published and "adapter free (free)" in why and "not measurements" in why


def test_the_gate_refuses_noise_and_an_adapter_that_barely_trained():
    """The run of issue 28: "adapter + 3 examples" 3/12 against the baseline's 2/12 was published. On the same
    pairs that is one pair won: p = 1.0, refused, whatever the margin."""
    base = [(RunConfig("base", "u", adapter="base"), _summary(2, 12))]
    noise = [(RunConfig("adapter + 3", "u", adapter="c", examples=3), _summary(3, 12))]
    published, why = _gate(base + noise, margin=0.05, alpha=0.05)
    assert not published and "1 pairs won, 0 lost, p = 1" in why and "not significant at 0.05" in why
    win = [(RunConfig("adapter", "u", adapter="c"), _summary(20, 40))]
    base40 = [(RunConfig("base", "u", adapter="base"), _summary(3, 40))]
    published, why = _gate(base40 + win, margin=0.05, alpha=0.05, training={"steps": 2, "planned_steps": 18},
                           gate_steps=5)
    assert not published and "2 of its 18 planned steps, under the 5" in why


@pytest.mark.parametrize("pairs, steps, gate_steps", [(48, None, 5), (1000, None, 94), (10_000, None, 100),
                                                      (48, 2, 1)])
def test_the_gate_judges_an_adapter_after_a_quarter_of_its_planned_steps_at_most_100(tmp_path, pairs, steps,
                                                                                     gate_steps):
    from service.onboarding.pipeline import _gate_steps

    config = OnboardConfig(grammar=tmp_path / "g.lark", pairs=tmp_path / "p.jsonl", name="u", work_dir=tmp_path,
                           steps=steps)
    assert _gate_steps(config, pairs) == gate_steps  # 3 epochs of batches of 8: 18, 375, 2,000 (capped) steps


def test_a_held_out_set_too_small_for_the_margin_is_refused_before_anything_runs(tmp_path):
    from service.evaluation.paired import min_pairs

    assert min_pairs(0.05, 0.05) == 120 and min_pairs(0.0, 0.05) == 6
    pairs = _pairs(tmp_path, [{"text": f"{i} km in miles", "code": f"{i} km -> mi"} for i in range(1, 41)])
    (tmp_path / "units.lark").write_text(GRAMMAR)
    config = OnboardConfig(grammar=tmp_path / "units.lark", pairs=pairs, name="units", work_dir=tmp_path / "work",
                           url="http://127.0.0.1:9", budget_s=60, margin=0.05, heldout=12)
    report = onboard(config)  # url points nowhere: the refusal comes before the service is called
    assert not report.published and "at least 120 pairs" in report.verdict
    assert (tmp_path / "work" / "report" / "ONBOARDING.md").exists()


def test_a_local_run_whose_budget_cannot_train_is_refused_before_the_service_starts(tmp_path, monkeypatch):
    import service.onboarding.pipeline as pipeline

    def no_service(**_):
        raise AssertionError("the service was started for a run its budget could not hold")

    monkeypatch.setattr(pipeline, "local_server", no_service)
    monkeypatch.setattr(pipeline, "_code_tokens", lambda dataset: [len(r.code.split()) for r in dataset.heldout])
    pairs = _pairs(tmp_path, [{"text": f"{i} km in miles", "code": f"{i} km -> mi"} for i in range(1, 41)])
    (tmp_path / "units.lark").write_text(GRAMMAR)
    config = OnboardConfig(grammar=tmp_path / "units.lark", pairs=pairs, name="units", work_dir=tmp_path / "work",
                           budget_s=60, heldout=12)
    report = onboard(config)
    assert not report.published and "give --budget 5m or more" in report.verdict
    assert "give --budget 5m" in (tmp_path / "work" / "report" / "ONBOARDING.md").read_text()


def test_summaries_carry_a_95_percent_interval_that_narrows_with_more_cases():
    small, large = _summary(5, 10), _summary(50, 100)
    assert small.exact_match == large.exact_match == 0.5
    assert small.exact_match_ci[0] < large.exact_match_ci[0] < 0.5 < large.exact_match_ci[1] < small.exact_match_ci[1]
    assert _summary(0, 10).exact_match_ci[0] == 0.0 and _summary(10, 10).exact_match_ci[1] == 1.0


def test_the_report_has_the_table_the_curve_and_the_verdict(tmp_path):
    report = Report(name="units", dsl="units", dataset={"train": 30, "heldout": 10, "rejected": 3, "duplicates": 2,
                                                        "conflicting": 1},
                    rows=[(RunConfig("base", "units", adapter="base"), _summary(2))], curve=[(2, 0.1), (4, 0.3)],
                    training={"steps": 4, "wall_time_s": 12.0, "tokens_per_s": 300.0, "best_step": 4},
                    published=False, verdict="below the baseline", command="nl2dsl onboard --grammar u.lark")
    markdown, chart, data = write_report(report, tmp_path)
    text = markdown.read_text()
    assert "Not published" in text and "| base | yes | 10 | 0.200 (0.06-0.51) |" in text and "| 4 | 0.300 |" in text
    assert chart.stat().st_size > 1000 and json.loads(data.read_text())["curve"] == [[2, 0.1], [4, 0.3]]


def test_a_re_run_keeps_the_baselines_only_while_nothing_they_depend_on_changed(tmp_path):
    """Re-running on the same pairs to train longer does not spend its budget scoring the base model again."""
    grammar = compile_grammar("units", GRAMMAR, origin="upload")
    pairs = [{"text": f"convert {i} km to miles", "code": f"{i} km -> mi"} for i in range(40)]
    dataset = build_dataset(grammar, _pairs(tmp_path, pairs), heldout=0.25, seed=7)
    config = OnboardConfig(grammar=tmp_path / "u.lark", pairs=tmp_path / "pairs.jsonl", name="units",
                           work_dir=tmp_path)
    key = _baseline_key("SmolLM2-135M-Instruct", GRAMMAR, config, dataset, 24)
    baselines = [(RunConfig("base", "units", adapter="base", examples=0), _summary(2)),
                 (RunConfig("base + 3 examples", "units", adapter="base", examples=3), _summary(4))]
    report = Report(name="units", dsl="units", dataset=dataset.summary(), baseline={"key": key, "seconds": 812.5},
                    rows=[*baselines, (RunConfig("adapter", "units", adapter="units-candidate"), _summary(9))])
    _, _, data = write_report(report, tmp_path / "report")

    assert _kept_baselines(data, key) == (baselines, 812.5)  # the rows as they were scored, the time they took
    more = build_dataset(grammar, _pairs(tmp_path, [*pairs, {"text": "convert 7 kg to pounds", "code": "7 kg -> lb"}]),
                         heldout=0.25, seed=7)
    changed = [_baseline_key("Mistral-7B-Instruct-v0.3", GRAMMAR, config, dataset, 24),  # another base model
               _baseline_key("SmolLM2-135M-Instruct", GRAMMAR + "\n", config, dataset, 24),  # the grammar
               _baseline_key("SmolLM2-135M-Instruct", GRAMMAR, config, more, 24),  # more pairs: other examples
               _baseline_key("SmolLM2-135M-Instruct", GRAMMAR, config, dataset, 32)]  # the output limit
    assert key not in changed and all(_kept_baselines(data, other) is None for other in changed)
    assert _kept_baselines(tmp_path / "none.json", key) is None


def test_onboard_refuses_a_budget_it_cannot_read(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["onboard", "--grammar", str(tmp_path / "g.lark"), "--pairs", str(tmp_path / "p.jsonl"),
              "--budget", "soon"])
    assert "argument --budget" in capsys.readouterr().err


@pytest.mark.parametrize("dsl", ["cron", "logq", "shop"])
def test_the_demo_pairs_parse_with_their_grammar_and_are_the_generators_output(dsl):
    import importlib

    from service.config import PROJECT_ROOT

    generate = importlib.import_module(f"service.demo_data.{dsl}").generate
    folder = PROJECT_ROOT / "data" / "onboarding" / dsl
    grammar = compile_grammar(dsl, (folder / f"{dsl}.lark").read_text(), origin="upload")
    shipped = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    assert shipped == generate(len(shipped))  # deterministic: the file is what the generator writes
    dataset = build_dataset(grammar, folder / "pairs.jsonl")
    assert not dataset.rejects and dataset.kept > 900 and len(dataset.heldout) == min(200, round(0.2 * dataset.kept))


def test_a_run_that_fails_after_registering_withdraws_the_dsl_it_made_and_says_what_stays(tmp_path):
    from contextlib import ExitStack
    from unittest.mock import MagicMock

    from nl2dsl_client import NL2DSLClient

    from service.onboarding.pipeline import _withdrawal
    from service.onboarding.status import Status

    for existed, expected in ((False, "was withdrawn"), (True, "stays at the version this run registered")):
        client, status = MagicMock(spec=NL2DSLClient), Status(tmp_path / f"status-{existed}.json")
        with pytest.raises(RuntimeError), ExitStack() as stack:
            stack.push(_withdrawal(client, "shop", existed=existed, status=status))
            raise RuntimeError("training died")
        assert expected in status.data["left_behind"]
        assert client.delete_dsl.called is not existed
    client, status = MagicMock(spec=NL2DSLClient), Status(None)
    with ExitStack() as stack:  # a run that ends with a verdict keeps what it registered
        stack.push(_withdrawal(client, "shop", existed=False, status=status))
    assert not client.delete_dsl.called and "left_behind" not in status.data


def test_a_budget_too_small_for_training_is_a_verdict_with_the_budget_that_would_do():
    from service.onboarding.plan import MIN_TRAINING_S, Plan

    # Issue 28's run: a 1-minute budget trained 2 of 18 steps and took about 5 minutes. Now the plan made once the
    # dataset is checked (12 held-out pairs, a local service) refuses it before the service starts.
    plan = Plan.before_start(60, spent_s=5, local=True, heldout=12, max_tokens=40, code_tokens=12)
    why = plan.too_short()
    assert why and "leaves 0 s for training" in why and "service start ~80 s" in why
    assert "give --budget 5m or more" in why
    assert Plan.before_start(300, spent_s=5, local=True, heldout=12, max_tokens=40, code_tokens=12).too_short() is None
    # After the baseline the plan is made again from its measured time.
    after = Plan.after_baseline(1800, spent_s=300, baseline_s=100, shorter=0.2)
    assert after.too_short() is None and after.training_s == 1800 - 300 - 55 - 30
    assert Plan.after_baseline(200 + MIN_TRAINING_S, spent_s=100, baseline_s=100, shorter=1.0).too_short()
    # NL2Bash with 10 minutes: planned without training's checks and set-up, 216 s held the gate's 100 steps at
    # 2 s, and training reached 71. The plan counts them now and names the budget that holds the steps.
    nl2bash = Plan.before_start(600, spent_s=82, local=True, heldout=100, max_tokens=89, code_tokens=20,
                                gate_steps=100)
    assert "give --budget 11m or more" in nl2bash.too_short() and "with the checks and set-up" in nl2bash.too_short()


@settings(max_examples=200, deadline=None)
@given(budget=st.floats(1, 7200), spent=st.floats(0, 600), heldout=st.integers(6, 2000),
       max_tokens=st.integers(1, 512), local=st.booleans())
def test_the_budget_a_refusal_names_is_one_the_plan_accepts(budget, spent, heldout, max_tokens, local):
    from service.onboarding.plan import Plan

    plan = Plan.before_start(budget, spent_s=spent, local=local, heldout=heldout, max_tokens=max_tokens,
                             code_tokens=max_tokens / 2)
    if why := plan.too_short():
        minutes = int(why.split("give --budget ")[1].split("m")[0])
        assert minutes * 60 > budget
        assert Plan.before_start(minutes * 60, spent_s=spent, local=local, heldout=heldout, max_tokens=max_tokens,
                                 code_tokens=max_tokens / 2).too_short() is None


def test_the_published_adapter_is_served_with_the_prompt_shape_its_evaluation_found_better(tmp_path):
    import yaml

    from service.onboarding.pipeline import _serve_with_better_shape

    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump({"name": "u", "prompt": {"examples": 0}}))
    rows = [(RunConfig("base + 3", "u", adapter="base", examples=3), _summary(9, 10)),
            (RunConfig("adapter", "u", adapter="c"), _summary(5, 10)),
            (RunConfig("adapter + 3", "u", adapter="c", examples=3), _summary(7, 10)),
            (RunConfig("adapter + 3 free", "u", adapter="c", examples=3, constrained=False), _summary(1, 10))]
    said = _serve_with_better_shape(tmp_path, rows)
    assert yaml.safe_load((tmp_path / "manifest.yaml").read_text())["prompt"]["examples"] == 3
    assert said == "served with 3 retrieved examples by default (0 examples 0.500, 3 examples 0.700)"
    tie = [rows[1], (RunConfig("adapter + 3", "u", adapter="c", examples=3), _summary(5, 10))]
    _serve_with_better_shape(tmp_path, tie)  # no evidence for the longer prompt: the shorter one
    assert yaml.safe_load((tmp_path / "manifest.yaml").read_text())["prompt"]["examples"] == 0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(1, 60), skip=st.integers(0, 80))
def test_fresh_pairs_repeat_no_request_they_were_kept_apart_from(seed, count, skip):
    """``python -m service.demo_data.logq OUT N --seed S --apart-from pairs.jsonl``: a test set for an adapter
    trained on pairs.jsonl. Here the requests to keep apart from are the seed's own first ones (the worst case):
    the new pairs skip them and any repeat, and keep the order the seed draws them in."""
    from service.demo_data import logq as logq_data
    from service.demo_data import pairs as demo_pairs

    seen = [row["text"] for row in logq_data.generate(skip, seed=seed)]
    rows = demo_pairs.fresh(logq_data.generate, count, seed=seed, seen=seen)
    texts = [row["text"] for row in rows]
    assert len(rows) == count and len(set(texts)) == count and not set(texts) & set(seen)
    stream = logq_data.generate(64 * count + skip, seed=seed)
    positions = [stream.index(row) for row in rows]
    assert positions == sorted(positions)  # the first new ones, in the seed's order


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40) | st.lists(st.integers(-3, 12), max_size=10).map(lambda xs: ",".join(map(str, xs))))
def test_eval_reads_examples_as_1_to_8_counts_of_0_to_8_or_refuses_the_option(value):
    """``nl2dsl eval --dsl D --test F --examples 0,3`` scores each count on the same pairs."""
    import argparse

    from service.cli import example_counts

    try:
        counts = example_counts(value)
    except argparse.ArgumentTypeError as exc:
        assert value[:40] in str(exc) or repr(value[:40]) in str(exc)
        return
    assert 1 <= len(counts) <= 8 and all(0 <= c <= 8 for c in counts)
    assert counts == [int(part) for part in value.split(",")]


def test_a_request_the_policy_refuses_is_an_answer_not_a_failed_measurement():
    """The tenant's safety policy refusing a held-out request (400 safety_blocked) is the service's answer, the
    same for every configuration: counted wrong and as refused, never as an error that stops the gate."""
    refused = Outcome("a", "", False, "refused", 0.0)
    wrong, right = Outcome("a", "b", True, "stop", 1.0), Outcome("a", "a", True, "stop", 1.0)
    base = [(RunConfig("base", "u", adapter="base"), summarize([refused] + [wrong] * 39))]
    win = [(RunConfig("adapter", "u", adapter="c"), summarize([refused] + [right] * 39))]
    assert base[0][1].refusal_rate == 1 / 40 and base[0][1].error_rate == 0
    published, why = _gate(base + win, margin=0.1, alpha=0.05)
    assert published and "39 pairs won, 0 lost" in why
