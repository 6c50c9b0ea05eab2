"""A short Locust run (every user class, half a minute) against the real service: no failed request, and the report."""

from __future__ import annotations

import yaml

from loadtest.gate import load_thresholds, read_rows
from loadtest.run import main
from tests.conftest import ADMIN_KEY


def test_locust_smoke_run_has_no_failures_and_a_breach_exits_1(server, tmp_path):
    # The shipped gate's request counts, required rows and failure ratios, without its latency bounds: tests
    # never assert wall-clock times (shared, noisy machines); tests/unit/test_loadtest_gate.py covers p95.
    gate = load_thresholds()
    for limits in gate["endpoints"].values():
        limits.pop("p95_ms", None)
    thresholds = tmp_path / "thresholds.yaml"
    thresholds.write_text(yaml.safe_dump(gate))
    out = tmp_path / "report"

    code = main(["--profile", "smoke", "--url", server.url, "--api-key", ADMIN_KEY, "--out", str(out),
                 "--thresholds", str(thresholds)])

    summary = (out / "summary.md").read_text()
    assert code == 0, summary
    assert summary.startswith("# Load test `smoke`: PASS")
    # Every user class finished requests (the gate requires each row): a class that did nothing would fail it.
    for name in ("/generate", "/generate (stream)", "/generate (burst)", "/generate (adapter churn)",
                 "/generate (bad input)"):
        assert f"| {name} |" in summary
    assert (out / "report.html").stat().st_size > 10_000
    assert (out / "locust_stats.csv").exists() and (out / "locust_failures.csv").exists()
    # The verdict counts every request, those that ended while Locust waited out the slow ones too.
    final = {row.name: row.requests for row in read_rows(out / "locust_final.json")}
    assert final["Aggregated"] == sum(n for name, n in final.items() if name != "Aggregated")
    assert f"| Aggregated | {final['Aggregated']} |" in summary

    # The same run against a gate it cannot meet: `make loadtest` exits 1 and the summary says why.
    gate["min_requests"] = 10**9
    thresholds.write_text(yaml.safe_dump(gate))
    assert main(["--profile", "smoke", "--from-run", str(out), "--thresholds", str(thresholds)]) == 1
    assert (out / "summary.md").read_text().startswith("# Load test `smoke`: FAIL")
