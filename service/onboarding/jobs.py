"""Onboarding runs started through the API (``POST /onboarding``): one ``nl2dsl onboard`` process at a time.

A run is the command line's pipeline in a child process of this replica, calling this replica's API as the
caller (its bearer key is handed to the child's environment, never written down), so it passes the same
checks, limits and quotas as the caller's own requests. Its folder holds the team's files, the log and the
status JSON the child keeps (``service/onboarding/status.py``); the work folder is per tenant and DSL name,
so a re-run with more pairs continues from the adapter the last one published. Training takes the machine's
cores: one run at a time per replica (409 while one is running). Runs live on the replica that started them;
production runs the chart's Job instead (templates/onboarding-job.yaml).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from service.errors import AdapterUnavailable, NotFound

__all__ = ["OnboardingBusy", "OnboardingJobs"]


class OnboardingBusy(AdapterUnavailable):
    type = "onboarding_busy"


class OnboardingJobs:
    """The runs under ``root``; ``url`` is this replica's own API, which the child calls."""

    def __init__(self, root: Path, *, url: str) -> None:
        self.root = Path(root)
        self.url = url
        self._running: dict[str, subprocess.Popen] = {}
        #: When each run is stopped whatever it is doing (its budget, and time to finish evaluating and report).
        self._deadlines: dict[str, float] = {}

    def start(self, name: str, grammar: str, pairs: str, options: dict[str, Any], *, tenant: str | None,
              api_key: str | None) -> dict[str, Any]:
        """Write the team's files and start the run; its status at once (``state`` "running").

        ``options``: ``nl2dsl onboard``'s options by name (``max_tokens`` for ``--max-tokens``; None: its default),
        ``budget_s`` the run's seconds.
        """
        self._stop_overdue()
        if any(process.poll() is None for process in self._running.values()):
            raise OnboardingBusy("an onboarding run is in progress on this replica: try again when it ends",
                                 headers={"Retry-After": "60"})
        job_id = secrets.token_hex(8)
        folder = self.root / "runs" / job_id
        folder.mkdir(parents=True)
        (folder / "grammar.lark").write_text(grammar, encoding="utf-8")
        (folder / "pairs.jsonl").write_text(pairs, encoding="utf-8")
        (folder / "job.json").write_text(json.dumps({"id": job_id, "name": name, "tenant": tenant,
                                                     "created": time.time()}))
        work = self.root / "work" / (tenant or "_shared") / name
        env = {k: v for k, v in os.environ.items() if k != "NL2DSL_API_KEY"}
        if api_key:
            env["NL2DSL_API_KEY"] = api_key
        with (folder / "log.txt").open("wb") as log:
            self._running[job_id] = subprocess.Popen(self.command(name, options, folder, work, tenant), stdout=log,
                                                     stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                                                     start_new_session=True)
        self._deadlines[job_id] = time.monotonic() + 1.5 * float(options["budget_s"]) + 300
        return self.status(job_id, tenant=tenant, admin=False)

    def command(self, name: str, options: dict[str, Any], folder: Path, work: Path, tenant: str | None) -> list[str]:
        """The child's command line: ``nl2dsl onboard`` on the run's files, against this replica."""
        command = [sys.executable, "-m", "service.cli", "onboard", "--grammar", str(folder / "grammar.lark"),
                   "--pairs", str(folder / "pairs.jsonl"), "--name", name, "--url", self.url, "--work-dir", str(work),
                   "--status", str(folder / "status.json")]
        for option, value in {**options, "tenant": tenant}.items():
            if value is not None:
                flag = "budget" if option == "budget_s" else option.replace("_", "-")
                command += [f"--{flag}", f"{value:.0f}" if option == "budget_s" else str(value)]
        return command

    def status(self, job_id: str, *, tenant: str | None, admin: bool) -> dict[str, Any]:
        """The run's status: what the child last wrote, and whether it is still running."""
        self._stop_overdue()
        folder, job = self._job(job_id, tenant=tenant, admin=admin)
        status_path = folder / "status.json"
        status = json.loads(status_path.read_text()) if status_path.exists() else {
            "state": "running", "stage": None, "progress": None, "report": None, "error": None}
        process = self._running.get(job_id)
        ended = process is None or process.poll() is not None
        if ended and status["state"] == "running":
            # The child ended without saying how (killed, or this replica restarted under it).
            status["state"] = "failed"
            status["error"] = status["error"] or "the run stopped before it finished; see the log"
        log = (folder / "log.txt").read_text(errors="replace") if (folder / "log.txt").exists() else ""
        lines = [line.rsplit("\r", 1)[-1] for line in log.splitlines() if line.strip()]
        return {**job, **status, "log": lines[-20:]}

    def report(self, job_id: str, filename: str, *, tenant: str | None, admin: bool) -> Path:
        """``ONBOARDING.md`` / ``.png`` / ``.json`` of a run that has ended."""
        folder, job = self._job(job_id, tenant=tenant, admin=admin)
        path = self.root / "work" / (job["tenant"] or "_shared") / job["name"] / "report" / filename
        if not path.exists():
            raise NotFound(f"onboarding run {job_id} has no report yet", detail={"id": job_id})
        return path

    def cancel(self, job_id: str, *, tenant: str | None, admin: bool) -> None:
        """Stop a run (its process group: the child and what it started); killed if still there 30 s later."""
        self._job(job_id, tenant=tenant, admin=admin)
        process = self._running.get(job_id)
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            timer = threading.Timer(30, _kill_if_running, args=(process,))
            timer.daemon = True
            timer.start()

    def _stop_overdue(self) -> None:
        """A run past its deadline (a grammar or pairs that make the child spin) is stopped."""
        for job_id, deadline in list(self._deadlines.items()):
            if time.monotonic() > deadline:
                del self._deadlines[job_id]
                self.cancel(job_id, tenant=None, admin=True)

    def close(self) -> None:
        for job_id in list(self._running):
            self.cancel(job_id, tenant=None, admin=True)

    def _job(self, job_id: str, *, tenant: str | None, admin: bool) -> tuple[Path, dict[str, Any]]:
        """The run's folder and record; another tenant's run is as absent as one that never was."""
        folder = self.root / "runs" / job_id
        record = folder / "job.json"
        if not (len(job_id) == 16 and job_id.isalnum() and record.exists()):
            raise NotFound(f"no onboarding run {job_id!r}", detail={"id": job_id})
        job = json.loads(record.read_text())
        if not admin and job["tenant"] != tenant:
            raise NotFound(f"no onboarding run {job_id!r}", detail={"id": job_id})
        return folder, job


def _kill_if_running(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
