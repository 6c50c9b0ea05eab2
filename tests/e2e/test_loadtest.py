"""A short Locust run (every user class, 90 s) against the real service passes its release gate."""

from __future__ import annotations

from loadtest.run import main
from tests.conftest import ADMIN_KEY


def test_locust_smoke_run_passes_the_gate_and_writes_the_report(server, tmp_path):
    code = main(["--profile", "smoke", "--url", server.url, "--api-key", ADMIN_KEY, "--out", str(tmp_path)])
    summary = (tmp_path / "summary.md").read_text()
    assert code == 0, summary
    assert summary.startswith("# Load test `smoke`: PASS")
    # Every user class ran; the first batch of a fresh CPU server is slow, so slower classes may not finish
    # a request within the 90 s: the rows that must be there are the steady and the refused requests.
    for name in ("/generate", "/generate (bad input)"):
        assert f"| {name} |" in summary
    assert (tmp_path / "report.html").stat().st_size > 10_000
    assert (tmp_path / "locust_stats.csv").exists() and (tmp_path / "locust_failures.csv").exists()
