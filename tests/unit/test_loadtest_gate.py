"""The load-test release gate: thresholds against Locust statistics (no Locust run)."""

from __future__ import annotations

from loadtest.gate import Row, check, load_thresholds, read_rows, write_rows

THRESHOLDS = {
    "min_requests": 10,
    "max_failure_ratio": 0.01,
    "endpoints": {
        "/generate": {"p95_ms": 5000, "max_failure_ratio": 0.01, "required": True},
        "/validate": {"p95_ms": 100},
    },
}


def _rows(generate_p95=1000.0, failures=0, requests=100, validate_p95=20.0):
    return [
        Row("/generate", requests, failures, 500.0, generate_p95, 2.0),
        Row("/validate", 20, 0, 5.0, validate_p95, 1.0),
        Row("Aggregated", requests + 20, failures, 400.0, generate_p95, 3.0),
    ]


def test_a_run_within_every_threshold_passes():
    assert check(_rows(), THRESHOLDS) == []


def test_slow_p95_fails_and_names_the_endpoint():
    breaches = check(_rows(generate_p95=7000), THRESHOLDS)
    assert [b.name for b in breaches] == ["/generate"] and "p95 7000 ms > 5000 ms" in str(breaches[0])


def test_failures_fail_the_run_overall_and_per_endpoint():
    names = {b.name for b in check(_rows(failures=5), THRESHOLDS)}
    assert names == {"Aggregated", "/generate"}


def test_a_run_that_sent_almost_nothing_fails():
    breaches = check(_rows(requests=3)[:1] + [Row("Aggregated", 3, 0, 1, 1, 1)], THRESHOLDS)
    assert any("requests < 10" in str(b) for b in breaches)


def test_a_required_endpoint_without_requests_fails():
    rows = [r for r in _rows() if r.name != "/generate"]
    assert any(b.name == "/generate" and "no requests" in b.what for b in check(rows, THRESHOLDS))


def test_rows_written_at_the_end_of_a_run_are_judged_as_written(tmp_path):
    rows = [Row("/generate", 40, 1, 2100.0, 5100.0, 1.5), Row("Aggregated", 40, 1, 2100.0, 5100.0, 1.5)]
    write_rows(tmp_path / "final.json", rows)
    read = read_rows(tmp_path / "final.json")
    assert read == rows
    assert [str(b) for b in check(read, THRESHOLDS)] == [
        "Aggregated: failure ratio 0.025 > 0.01",
        "/generate: p95 5100 ms > 5000 ms",
        "/generate: failure ratio 0.025 > 0.01",
    ]


def test_shipped_thresholds_gate_generate():
    for name in ("thresholds.yaml", "thresholds-gpu.yaml"):
        from loadtest.gate import DEFAULT_THRESHOLDS

        thresholds = load_thresholds(DEFAULT_THRESHOLDS.with_name(name))
        assert thresholds["endpoints"]["/generate"]["required"] is True
        assert check(_rows(generate_p95=10_000_000), thresholds)
