"""``nl2dsl onboard`` end to end against the real service: a DSL nobody here wrote, a few training steps on the
CPU, the gate, the adapter published and served, the report written."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import yaml

GRAMMAR = 'start: conversion (";" conversion)*\nconversion: NUMBER " " UNIT " -> " UNIT\n' \
          'UNIT: "km" | "mi" | "kg" | "lb" | "c" | "f"\n%import common.NUMBER\n'
UNITS = {"km": ["kilometres", "km", "kilometers"], "mi": ["miles", "mi"], "kg": ["kilos", "kg", "kilograms"],
         "lb": ["pounds", "lbs"], "c": ["celsius", "degrees C"], "f": ["fahrenheit", "deg F"]}
PAIRS = [("km", "mi"), ("mi", "km"), ("kg", "lb"), ("lb", "kg"), ("c", "f"), ("f", "c")]


def _pairs(n: int, seed: int = 0) -> list[dict]:
    """Varied phrasings, as users write them (synonyms, no capitals, a typo now and then)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.choice(PAIRS)
        value = rng.randint(1, 500)
        verb = rng.choice(["convert", "how much is", "turn", "convrt", "what's"])
        rows.append({"text": f"{verb} {value} {rng.choice(UNITS[a])} in {rng.choice(UNITS[b])}",
                     "code": f"{value} {a} -> {b}"})
    return rows


def test_onboarding_checks_the_pairs_trains_gates_publishes_and_reports(server, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [json.dumps(r) for r in _pairs(48)]
    rows.insert(5, json.dumps({"text": "convert ten km", "code": "ten km -> mi"}))  # line 6: does not parse
    pairs.write_text("\n".join(rows) + "\n")
    grammar = tmp_path / "units.lark"
    grammar.write_text(GRAMMAR)
    work = tmp_path / "work"
    # A margin of -1 and alpha 1 publish whatever trains (two steps learn little): this checks the path to a served
    # adapter; the gate's own decisions are unit-tested.
    command = [sys.executable, "-m", "service.cli", "onboard", "--grammar", str(grammar), "--pairs", str(pairs),
               "--url", server.url, "--steps", "2", "--batch-size", "4", "--heldout", "5", "--max-tokens", "24",
               "--margin", "-1", "--alpha", "1", "--work-dir", str(work), "--description", "Unit conversions.",
               "--status", str(tmp_path / "status.json")]
    env = {**os.environ, "NL2DSL_API_KEY": "alpha-key", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    status = json.loads((tmp_path / "status.json").read_text())  # what an onboarding job's status shows
    assert status["state"] == "published" and status["error"] is None
    assert [name for name, _ in status["stages"]] == ["dataset", "register", "baseline", "train",
                                                      "publish candidate", "evaluate", "evaluate candidates",
                                                      "evaluate without grammar", "publish"]
    assert len(status["report"]["rows"]) == 7 and status["progress"]["total"] == 2
    rejects = json.loads((work / "rejects.json").read_text())
    assert [r["line"] for r in rejects] == [6]
    report = json.loads((work / "report" / "ONBOARDING.json").read_text())
    labels = [row["config"]["label"] for row in report["rows"]]
    assert labels[:2] == ["base", "base + 3 examples"] and len(labels) == 7
    assert sum(row["config"]["candidates"] == 3 for row in report["rows"]) == 1
    # The adapter serves with candidates by default only if they scored better; its confidence is calibrated.
    manifest = yaml.safe_load((work / "published" / "manifest.yaml").read_text())
    assert manifest["prompt"]["candidates"] in (1, 3) and {"a", "b"} <= set(manifest["confidence"])
    assert report["calibration"]["raw"]["n"] == 5 and "## Confidence" in (work / "report" / "ONBOARDING.md").read_text()
    assert all(row["summary"]["n"] == 5 for row in report["rows"])
    assert report["published"] and report["training"]["steps"] == 2 and report["curve"]
    for row in report["rows"]:
        if row["config"]["constrained"]:
            assert row["summary"]["grammar_violation_rate"] == 0.0
    with server.client("alpha-key") as alpha:
        names = [a["name"] for a in alpha.get("/adapters").json()]
        assert "units" in names and "units-candidate" not in names
        generated = alpha.post("/generate", json={"dsl": "units", "adapter": "units", "text": "convert 5 kg in lbs",
                                                  "max_tokens": 24}).json()
        assert generated["adapter"] == "units" and (generated["valid"] or generated["finish_reason"] == "length")
        assert alpha.get("/adapters/units/versions").json()[-1]["version"] >= 1
        with server.client("beta-key") as beta:  # another tenant's adapter is not there for anyone else
            assert "units" not in [a["name"] for a in beta.get("/adapters").json()]
    assert "curl -X POST" in done.stderr and "units" in (work / "report" / "ONBOARDING.md").read_text()

    # More pairs later: the re-run continues from the adapter the first run published, scored on the same held-out
    # pairs (a new split of more pairs would hold out some the adapter was trained on).
    first_heldout = sorted((work / "heldout.jsonl").read_text().splitlines())
    pairs.write_text("".join(json.dumps(r) + "\n" for r in _pairs(64, seed=1)))
    command[command.index("--steps") + 1] = "1"
    # The key on the command line this time: no report, status, log or stored object may carry it (issue 42).
    command += ["--api-key", "alpha-key"]
    again = subprocess.run(command, env={k: v for k, v in env.items() if k != "NL2DSL_API_KEY"},
                           capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "alpha-key" not in again.stdout + again.stderr
    assert [p for p in tmp_path.rglob("*") if p.is_file() and b"alpha-key" in p.read_bytes()] == []
    assert '--api-key "$NL2DSL_API_KEY"' in (work / "report" / "ONBOARDING.md").read_text()
    report = json.loads((work / "report" / "ONBOARDING.json").read_text())
    assert report["training"]["init_from"] == str(work / "published") and "continuing from" in again.stderr
    assert sorted((work / "heldout.jsonl").read_text().splitlines()) == first_heldout
    lineage = yaml.safe_load((work / "published" / "manifest.yaml").read_text())["training"]
    assert lineage["init_from"]["steps"] == 2 and lineage["total_steps"] == 3
    with server.client("alpha-key") as alpha:
        assert alpha.get("/adapters/units/versions").json()[-1]["version"] >= 2
        assert alpha.delete("/adapters/units").status_code == 204 and alpha.delete("/dsls/units").status_code == 204
