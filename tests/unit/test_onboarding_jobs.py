"""``/onboarding`` runs: started as the caller, one at a time, the caller's only, a dead run reported as failed.

The app runs with a fake engine; the child process is a stand-in script (the real ``nl2dsl onboard`` child is
driven by tests/e2e/test_playground.py against the real service) that records what it was given and writes a
status as the real one does.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
import yaml

from service.onboarding.jobs import OnboardingJobs
from service.security import hash_key

KEYS = {"alpha-key": {"tenant": "alpha"}, "beta-key": {"tenant": "beta"}, "admin-key": {"admin": True}}
CHILD = """
import json, os, sys, time
args = sys.argv[1:]
status = args[args.index("--status") + 1]
json.dump({"argv": args, "key": os.environ.get("NL2DSL_API_KEY")}, open(status + ".seen", "w"))
json.dump({"state": "running", "stage": "train", "progress": {"step": 3, "total": 10, "score": 0.5, "curve": []},
           "report": None, "error": None}, open(status, "w"))
time.sleep(float(os.environ.get("CHILD_SLEEP", "30")))
if os.environ.get("CHILD_DIES") != "1":
    json.dump({"state": "published", "stage": None, "progress": None, "report": {"verdict": "ok"}, "error": None},
              open(status, "w"))
"""
BODY = {"name": "units", "grammar": 'start: /[0-9]+/ " km"\n', "pairs": '{"text": "5 km", "code": "5 km"}\n',
        "budget_s": 600, "steps": 2}


@pytest.fixture
def client(make_client, tmp_path, monkeypatch):
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"sha256": hash_key(k), **v} for k, v in KEYS.items()]}))
    real = OnboardingJobs.command
    # The stand-in gets the real command's arguments (after "python -m service.cli onboard").
    monkeypatch.setattr(OnboardingJobs, "command", lambda self, *args: [sys.executable, "-c", CHILD,
                                                                        *real(self, *args)[4:]])
    with make_client(auth="keys", api_keys_file=keys, onboarding_dir=tmp_path / "onboarding") as c:
        yield c


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _wait_for(client, job_id: str, key: str, state: str, stage: str | None = None) -> dict:
    for _ in range(200):
        status = client.get(f"/onboarding/{job_id}", headers=_as(key)).json()
        if status["state"] == state and (stage is None or status["stage"] == stage):
            return status
        time.sleep(0.1)
    raise AssertionError(f"run {job_id} never reached {state}: {status}")


def test_a_run_is_the_callers_own_and_one_runs_at_a_time(client, tmp_path, monkeypatch):
    started = client.post("/onboarding", json=BODY, headers=_as("alpha-key"))
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["state"] == "running" and job["tenant"] == "alpha" and job["name"] == "units"
    status = _wait_for(client, job["id"], "alpha-key", "running", stage="train")
    seen = json.loads((tmp_path / "onboarding" / "runs" / job["id"] / "status.json.seen").read_text())
    # The child acts as the caller: its key, its tenant, this replica's URL; the budget and steps as asked.
    assert seen["key"] == "alpha-key"
    argv = seen["argv"]
    assert argv[argv.index("--tenant") + 1] == "alpha" and argv[argv.index("--steps") + 1] == "2"
    assert argv[argv.index("--budget") + 1] == "600" and argv[argv.index("--url") + 1].startswith("http://127.0.0.1:")
    assert status["progress"]["step"] == 3 and status["progress"]["total"] == 10
    # Another tenant cannot see it, stop it, or read its report; an admin can see it.
    for method in ("get", "delete"):
        refused = getattr(client, method)(f"/onboarding/{job['id']}", headers=_as("beta-key"))
        assert refused.status_code == 404 and refused.json()["error"]["type"] == "not_found"
    assert client.get(f"/onboarding/{job['id']}/report.md", headers=_as("beta-key")).status_code == 404
    assert client.get(f"/onboarding/{job['id']}", headers=_as("admin-key")).status_code == 200
    # One run at a time on a replica: the next caller is told to come back.
    busy = client.post("/onboarding", json={**BODY, "name": "other"}, headers=_as("beta-key"))
    assert busy.status_code == 409 and busy.json()["error"]["type"] == "onboarding_busy"
    assert busy.headers["retry-after"] == "60"
    # Stopping it: the run ended without a verdict, so it failed, and the next one may start.
    assert client.delete(f"/onboarding/{job['id']}", headers=_as("alpha-key")).status_code == 204
    assert _wait_for(client, job["id"], "alpha-key", "failed")["error"]
    monkeypatch.setenv("CHILD_SLEEP", "0")
    again = client.post("/onboarding", json={**BODY, "name": "other"}, headers=_as("beta-key"))
    assert again.status_code == 202
    assert _wait_for(client, again.json()["id"], "beta-key", "published")["report"] == {"verdict": "ok"}


def test_a_run_that_dies_without_a_verdict_is_failed_not_running_forever(client, monkeypatch):
    monkeypatch.setenv("CHILD_SLEEP", "0")
    monkeypatch.setenv("CHILD_DIES", "1")
    job = client.post("/onboarding", json=BODY, headers=_as("alpha-key")).json()
    status = _wait_for(client, job["id"], "alpha-key", "failed")
    assert "stopped before it finished" in status["error"]
    report = client.get(f"/onboarding/{job['id']}/report.md", headers=_as("alpha-key"))
    assert report.status_code == 404 and "no report yet" in report.json()["error"]["message"]


@pytest.mark.parametrize(("change", "field"), [({"budget_s": 10**6}, None), ({"name": "Bad Name"}, "name"),
                                                ({"pairs": ""}, "pairs"), ({"steps": 0}, "steps"),
                                                ({"surprise": 1}, "surprise")])
def test_bad_runs_are_refused_with_422_before_anything_starts(client, tmp_path, change, field):
    refused = client.post("/onboarding", json={**BODY, **change}, headers=_as("alpha-key"))
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["type"] == "invalid_request"
    assert not (tmp_path / "onboarding" / "runs").exists() or not list((tmp_path / "onboarding" / "runs").iterdir())


def test_run_ids_that_cannot_exist_are_422_and_unknown_ones_404(client):
    assert client.get("/onboarding/..%2F..%2Fetc", headers=_as("alpha-key")).status_code in (404, 422)
    assert client.get("/onboarding/not-an-id", headers=_as("alpha-key")).status_code == 422
    missing = client.get("/onboarding/0123456789abcdef", headers=_as("alpha-key"))
    assert missing.status_code == 404
