"""``/onboarding`` runs: started as the caller, one at a time (atomically), the caller's only, confined (priority,
CPU time, memory, environment), supervised (deadline, reaping, retention), options as data, no server paths.

The app runs with a fake engine; the child process is a stand-in script (the real ``nl2dsl onboard`` child is
driven by tests/e2e/test_playground.py against the real service) that records what it was given and writes a
status as the real one does.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from service.onboarding.jobs import OnboardingJobs
from service.security import hash_key
from tests.helpers import eventually

KEYS = {"alpha-key": {"tenant": "alpha"}, "beta-key": {"tenant": "beta"}, "admin-key": {"admin": True}}
CHILD = """
import json, os, resource, sys, time
os.environ.update(json.loads(sys.argv[1]))  # the test's CHILD_* settings (the child's own environment is minimal)
args = sys.argv[2:]
status = args[args.index("--status") + 1]
json.dump({"argv": args, "key": os.environ.get("NL2DSL_API_KEY"), "env": sorted(os.environ),
           "nice": os.getpriority(os.PRIO_PROCESS, 0), "cpu": resource.getrlimit(resource.RLIMIT_CPU)[0],
           "policy": os.sched_getscheduler(0),
           "memory": resource.getrlimit(resource.RLIMIT_AS)[0]}, open(status + ".seen", "w"))
if os.environ.get("CHILD_CRASHES") == "1":
    raise RuntimeError("cannot read " + status)
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
def client(make_client, tmp_path, monkeypatch, request):
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"sha256": hash_key(k), **v} for k, v in KEYS.items()]}))
    real = OnboardingJobs.command
    # The stand-in gets the real command's arguments (after "python -m service.cli onboard").
    monkeypatch.setattr(OnboardingJobs, "command", lambda self, *args: [
        sys.executable, "-c", CHILD, json.dumps({k: v for k, v in os.environ.items() if k.startswith("CHILD_")}),
        *real(self, *args)[4:]])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-store-secret")  # the server's: never the child's
    options = {"auth": "keys", "api_keys_file": keys, "onboarding_dir": tmp_path / "onboarding",
               "onboarding_memory_mb": 4096, **getattr(request, "param", {})}
    with make_client(**options) as c:
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
    # The child acts as the caller: its key, its tenant, this replica's URL; the budget and steps as asked, as data.
    assert seen["key"] == "alpha-key"
    argv = seen["argv"]
    options = json.loads(Path(argv[argv.index("--options") + 1]).read_text())
    assert options["tenant"] == "alpha" and options["steps"] == 2 and options["budget_s"] == 600
    assert argv[argv.index("--url") + 1].startswith("http://127.0.0.1:")
    assert status["progress"]["step"] == 3 and status["progress"]["total"] == 10
    # Another tenant cannot see it, stop it, or read its report; an admin can see it.
    for method in ("get", "delete"):
        refused = getattr(client, method)(f"/onboarding/{job['id']}", headers=_as("beta-key"))
        assert refused.status_code == 404 and refused.json()["error"]["type"] == "not_found"
    assert client.get(f"/onboarding/{job['id']}/report.md", headers=_as("beta-key")).status_code == 404
    assert client.get(f"/onboarding/{job['id']}", headers=_as("admin-key")).status_code == 200
    # One run per tenant: its second is refused; another tenant's waits in the queue rather than being refused.
    busy = client.post("/onboarding", json={**BODY, "name": "other"}, headers=_as("alpha-key"))
    assert busy.status_code == 409 and busy.json()["error"]["type"] == "onboarding_busy"
    assert busy.headers["retry-after"] == "60"
    monkeypatch.setenv("CHILD_SLEEP", "0")
    queued = client.post("/onboarding", json={**BODY, "name": "other"}, headers=_as("beta-key"))
    assert queued.status_code == 202 and queued.json()["state"] == "queued" and queued.json()["queue_position"] == 1
    # Stopping the first: it ended without a verdict, so it failed, and the queued one starts by itself.
    assert client.delete(f"/onboarding/{job['id']}", headers=_as("alpha-key")).status_code == 204
    assert _wait_for(client, job["id"], "alpha-key", "failed")["error"]
    assert _wait_for(client, queued.json()["id"], "beta-key", "published")["report"] == {"verdict": "ok"}


def test_a_queued_run_can_be_cancelled_before_it_starts(client):
    first = client.post("/onboarding", json=BODY, headers=_as("alpha-key")).json()
    queued = client.post("/onboarding", json=BODY, headers=_as("beta-key")).json()
    assert queued["state"] == "queued"
    assert client.delete(f"/onboarding/{queued['id']}", headers=_as("beta-key")).status_code == 204
    status = client.get(f"/onboarding/{queued['id']}", headers=_as("beta-key")).json()
    assert status["state"] == "failed" and status["error"] == "cancelled before it started"
    assert client.post("/onboarding", json=BODY, headers=_as("beta-key")).json()["state"] == "queued"
    client.delete(f"/onboarding/{first['id']}", headers=_as("alpha-key"))


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


def _seen(tmp_path, job_id: str) -> dict:
    path = tmp_path / "onboarding" / "runs" / job_id / "status.json.seen"
    for _ in range(200):
        if path.exists() and path.stat().st_size:
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise AssertionError("the child never started")


def test_the_child_runs_confined_with_a_minimal_environment(client, tmp_path):
    job = client.post("/onboarding", json=BODY, headers=_as("alpha-key")).json()
    seen = _seen(tmp_path, job["id"])
    assert seen["nice"] >= 10 and seen["memory"] == 4096 * 2**20
    assert seen["policy"] == os.SCHED_IDLE  # CPU time only when serving does not want it
    assert 0 < seen["cpu"] <= (1.5 * 600 + 300) * os.cpu_count()
    assert "AWS_SECRET_ACCESS_KEY" not in seen["env"] and not [k for k in seen["env"] if k.startswith("NL2DSL_")
                                                                 and k not in ("NL2DSL_API_KEY", "NL2DSL_CACHE_DIR")]
    client.delete(f"/onboarding/{job['id']}", headers=_as("alpha-key"))


def test_options_reach_the_child_as_data_never_as_flags(client, tmp_path):
    job = client.post("/onboarding", json={**BODY, "description": "--pairs=/etc/passwd"}, headers=_as("alpha-key"))
    assert job.status_code == 202
    seen = _seen(tmp_path, job.json()["id"])
    assert not any("passwd" in arg for arg in seen["argv"])
    options = json.loads(Path(seen["argv"][seen["argv"].index("--options") + 1]).read_text())
    assert options["description"] == "--pairs=/etc/passwd"
    client.delete(f"/onboarding/{job.json()['id']}", headers=_as("alpha-key"))


def test_six_concurrent_starts_start_one_run(client):
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: client.post("/onboarding", json={**BODY, "name": f"n{i}"},
                                                      headers=_as("alpha-key")), range(6)))
    assert sorted(a.status_code for a in answers) == [202] + [409] * 5
    started = next(a.json() for a in answers if a.status_code == 202)
    client.delete(f"/onboarding/{started['id']}", headers=_as("alpha-key"))


def test_a_grammar_the_dsl_sandbox_refuses_is_refused_before_a_run_starts(make_client, tmp_path):
    with make_client(onboarding_dir=tmp_path / "onboarding", grammar_compile_timeout_s=0.0001) as client:
        refused = client.post("/onboarding", json=BODY)
    assert refused.status_code == 400 and refused.json()["error"]["detail"]["limit"] == "compile_time"
    assert not (tmp_path / "onboarding" / "runs").exists()


def test_the_supervisor_stops_an_overdue_run_and_reaps_it_without_anyone_asking(client):
    job = client.post("/onboarding", json=BODY, headers=_as("alpha-key")).json()
    jobs = client.app.state.onboarding_jobs
    pid = jobs._running[job["id"]].pid
    jobs._deadlines[job["id"]] = 0.0  # overdue now; nobody polls the status from here on
    for _ in range(300):
        try:
            os.kill(pid, 0)  # a zombie still answers: only a reaped child is gone
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the overdue child was not stopped and reaped")


@pytest.mark.parametrize("client", [{"onboarding_retention_s": 0.0}], indirect=True)
def test_finished_runs_are_removed_after_their_retention(client, tmp_path, monkeypatch):
    monkeypatch.setenv("CHILD_SLEEP", "0")
    job = client.post("/onboarding", json=BODY, headers=_as("alpha-key")).json()
    folder = tmp_path / "onboarding" / "runs" / job["id"]
    for _ in range(300):
        if not folder.exists():
            break
        time.sleep(0.1)
    assert not folder.exists()
    assert client.get(f"/onboarding/{job['id']}", headers=_as("alpha-key")).status_code == 404


@pytest.mark.parametrize("client", [{"onboarding_max_tenant_bytes": 10_000}], indirect=True)
def test_a_tenants_runs_are_held_to_its_disk_quota(client, monkeypatch):
    monkeypatch.setenv("CHILD_SLEEP", "0")
    big = {**BODY, "pairs": '{"text": "5 km", "code": "5 km"}\n' * 400}
    refused = client.post("/onboarding", json=big, headers=_as("alpha-key"))
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "quota_exceeded"
    assert client.post("/onboarding", json=BODY, headers=_as("beta-key")).status_code == 202


def test_a_crashed_run_says_one_line_of_cause_and_no_server_path(client, monkeypatch, tmp_path):
    monkeypatch.setenv("CHILD_CRASHES", "1")
    job = client.post("/onboarding", json=BODY, headers=_as("alpha-key")).json()
    status = _wait_for(client, job["id"], "alpha-key", "failed")
    assert status["error"] == "RuntimeError: cannot read status.json"
    shown = json.dumps(status)
    assert str(tmp_path) not in shown and "Traceback" not in shown and 'File "' not in shown


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_the_child_is_paused_while_other_tenants_generate_and_resumed_after(client, tmp_path):
    """Lower priority was not enough (docs/SECURITY.md, 17): the child stops while other tenants' generations
    are in flight, and goes on when none are; a paused run can still be stopped."""
    jobs = client.app.state.onboarding_jobs
    busy = {"now": False}
    jobs.others_busy = lambda tenant: busy["now"] and tenant != "beta"
    job = client.post("/onboarding", json=BODY, headers=_as("alpha-key")).json()
    _seen(tmp_path, job["id"])
    pid = jobs._running[job["id"]].pid
    busy["now"] = True
    eventually(lambda: _state(pid) == "T", "the child paused")
    assert client.get(f"/onboarding/{job['id']}", headers=_as("alpha-key")).json()["paused"] is True
    busy["now"] = False
    eventually(lambda: _state(pid) in "RS", "the child resumed")
    busy["now"] = True
    eventually(lambda: _state(pid) == "T", "the child paused again")
    assert client.delete(f"/onboarding/{job['id']}", headers=_as("alpha-key")).status_code == 204
    assert _wait_for(client, job["id"], "alpha-key", "failed")["error"]
