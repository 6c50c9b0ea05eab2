"""Candidates that agree and a confidence to act on: the vote by meaning, the API around a fake engine, and the
calibration fitted on held-out answers."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from service.api.generate.candidates import Sample, vote
from service.config import Settings
from service.engine import Delta
from service.evaluation.confidence import Calibration, raw_confidence, reliability
from service.grammars import GrammarRegistry

SQL = GrammarRegistry(Settings().grammars_dir).load().get("sql")
A = "SELECT segment, COUNT(*) FROM customers GROUP BY segment, country"
A_REORDERED = "SELECT segment, COUNT(*) FROM customers GROUP BY country, segment"
B = "SELECT segment FROM customers"


def _sample(code: str, logprob: float = -1.0) -> Sample:
    return Sample(code, SQL.parse(code), logprob, 4, "stop")


def test_the_answer_is_the_meaning_most_candidates_share():
    chosen = vote([_sample(B, -0.1), _sample(A, -2.0), _sample(A_REORDERED, -3.0)], SQL)
    assert chosen.votes == (1, 2, 2) and chosen.winner == 1  # two agree; of those, the likelier
    tie = vote([_sample(B, -2.0), _sample(A, -0.5)], SQL)
    assert tie.votes == (1, 1) and tie.winner == 1  # a tie: the likelier
    broken = vote([_sample("SELECT", -0.1), _sample("SELECT", -0.1), _sample(B, -5.0)], SQL)
    assert broken.winner == 2  # code that parses before any that does not, however many agree on it


def _engine_by_candidate(client, codes: list[str]) -> None:
    """Candidate i (request id ``...-i``) answers ``codes[i]``; a request without candidates the first."""
    async def generate(prompt_token_ids, *, request_id, tenant=None, adapter=None, params=None, deadline=None):
        client.engine.calls.append({"request_id": request_id, "params": params})
        index = int(request_id.rsplit("-", 1)[1]) if "-" in request_id else 0
        yield Delta(codes[index], 4, "stop", 0.001, 0, -0.4)

    client.engine.generate = generate


def test_candidates_answer_the_majority_with_its_votes_and_confidence(make_client):
    with make_client() as client:
        _engine_by_candidate(client, [B, A, A_REORDERED])
        body = {"dsl": "sql", "text": "segments", "context": "customers(id, segment, country)"}
        r = client.post("/generate", json={**body, "candidates": 3, "return_candidates": True, "seed": 7})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["code"] == A and [c["votes"] for c in answer["candidates"]] == [1, 2, 2]
        assert math.isclose(answer["confidence"], math.exp(-0.1) * 2 / 3, rel_tol=1e-6)
        assert answer["usage"]["completion_tokens"] == 12 and answer["calibrated"] is False
        calls = client.engine.calls
        assert len({c["request_id"] for c in calls}) == 3  # each its own engine request
        assert [c["params"].temperature for c in calls] == [0.0, 0.7, 0.7] and [c["params"].seed for c in
                                                                              calls] == [7, 8, 9]
        alone = client.post("/generate", json=body).json()
        assert alone["code"] == B and alone["candidates"] is None and 0 < alone["confidence"] <= 1


def test_any_candidates_value_is_served_or_a_clear_422(make_client):
    @settings(max_examples=40, deadline=None)
    @given(candidates=st.one_of(st.integers(-5, 40), st.text(max_size=5), st.none(),
                                st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["3", 2.0, True])),
           stream=st.booleans())
    def check(candidates, stream):
        r = client.post("/generate", json={"dsl": "flow", "text": "post forms to #sales", "candidates": candidates,
                                           "stream": stream})
        one = type(candidates) is int and 1 <= candidates <= 8 and (candidates == 1 or not stream)
        ok = candidates is None or one
        assert r.status_code == (200 if ok else 422), (candidates, stream, r.text)
        if not ok:
            assert r.json()["error"]["type"] == "invalid_request"

    with make_client() as client:
        check()


def test_a_calibration_fitted_on_held_out_answers_makes_confidence_mean_what_it_says():
    rng = random.Random(0)
    raw = [rng.random() for _ in range(600)]
    right = [rng.random() < r ** 3 for r in raw]  # the raw score is overconfident
    before = reliability(raw, right)
    calibration = Calibration.fit(raw, right)
    after = reliability([calibration(r) for r in raw], right)
    assert after.ece < before.ece / 2 and after.ece < 0.05
    threshold, share, accuracy = after.above[1]
    assert threshold == 0.8 and 0 < share < 1 and accuracy > 0.75
    assert Calibration.of({"a": calibration.a, "b": calibration.b}) == calibration
    assert Calibration.of({"a": float("nan"), "b": 0}) is None and Calibration.of("x") is None
    assert raw_confidence(-0.2, valid=False) == 0.0 and raw_confidence(5.0) == 1.0


def test_an_adapter_onboarded_with_candidates_serves_them_by_default_but_never_to_a_stream(make_client, tmp_path):
    import yaml

    from service.model import base_fingerprint, resolve_model
    from tests.helpers import write_fake_adapter

    adapters = tmp_path / "adapters"
    adapters.mkdir()
    folder = write_fake_adapter(adapters, "sql-voting", fingerprint=base_fingerprint(
        resolve_model(None, Settings().cache_dir)), dsl="sql")
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    manifest["prompt"] = {"candidates": 3}
    manifest["confidence"] = {"a": 2.0, "b": -1.0}
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    with make_client(adapters_dir=adapters) as client:
        _engine_by_candidate(client, [B, A, A_REORDERED])
        body = {"dsl": "sql", "text": "segments", "context": "customers(id, segment, country)"}
        answer = client.post("/generate", json=body).json()
        assert answer["adapter"] == "sql-voting" and answer["code"] == A and len(client.engine.calls) == 3
        raw = math.exp(-0.1) * 2 / 3
        assert answer["calibrated"] and math.isclose(answer["confidence"], Calibration(2.0, -1.0)(raw))
        client.engine.calls.clear()
        assert client.post("/generate", json={**body, "stream": True}).status_code == 200
        assert client.post("/generate", json={**body, "candidates": 1}).json()["code"] == B
        assert len(client.engine.calls) == 2  # one each


def test_onboarding_serves_candidates_only_where_they_scored_better_and_calibrates(tmp_path):
    import yaml

    from service.evaluation.runner import Outcome, RunConfig, summarize
    from service.onboarding.pipeline import _calibrate, _serve_with_candidates

    def scored(right: int, confidence: float) -> object:
        return summarize([Outcome(A, A if i < right else B, True, "stop", 1.0, confidence=confidence if i < right
                                  else confidence / 3) for i in range(40)], SQL)

    alone = RunConfig("adapter", "sql", adapter="c")
    voting = RunConfig("adapter, 3 candidates", "sql", adapter="c", candidates=3)
    (tmp_path / "manifest.yaml").write_text("name: c\n")
    said = _serve_with_candidates(tmp_path, [(alone, scored(20, 0.9)), (voting, scored(26, 0.9))])
    assert "served with 3 candidates" in said
    assert yaml.safe_load((tmp_path / "manifest.yaml").read_text())["prompt"]["candidates"] == 3
    _serve_with_candidates(tmp_path, [(alone, scored(20, 0.9)), (voting, scored(20, 0.9))])
    assert yaml.safe_load((tmp_path / "manifest.yaml").read_text())["prompt"]["candidates"] == 1  # a tie: cheaper
    measured = _calibrate(tmp_path, [(alone, scored(20, 0.9))])
    manifest = yaml.safe_load((tmp_path / "manifest.yaml").read_text())
    assert manifest["confidence"]["fitted_on"] == 40 and measured["calibrated"]["ece"] < measured["raw"]["ece"]
