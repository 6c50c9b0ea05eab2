"""`nl2dsl eval` end to end against the real service: one item per case (the command, not the scores), report,
chart and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ADMIN_KEY


def test_eval_command_scores_a_small_set_through_the_service(server, tmp_path):
    out = tmp_path / "SMOKE.md"
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "eval", "--suite", "smoke", "--url", server.url, "--api-key", ADMIN_KEY,
         "--limit", "1", "--concurrency", "4", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.with_suffix(".json").read_text())
    assert len(results) == 4 and all(r["summary"]["n"] == 1 for r in results)
    for r in results:
        s = r["summary"]
        assert s["error_rate"] == 0.0
        if r["case"]["constrained"]:
            assert s["grammar_violation_rate"] == 0.0  # valid by construction
        if r["case"]["constrained"] and r["case"]["dsl"] == "flow":  # the catalog is in the grammar
            assert s["name_hallucination_rate"] == 0.0 and s["key_hallucination_rate"] == 0.0
        assert 0.0 <= s["tree_similarity"] <= 1.0 and s["p95_s"] >= s["p50_s"] > 0
    assert "## Test set `flow`" in out.read_text() and out.with_suffix(".png").exists()
