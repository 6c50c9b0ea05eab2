"""Onboarding runs started through the API (``POST /onboarding``): one confined ``nl2dsl onboard`` child at a time.

A run is the command line's pipeline in a child process of this replica, calling this replica's API as the
caller (its key is handed to the child's environment, never written down), so it passes the same checks,
limits and quotas as the caller's own requests. The grammar has passed the same sandbox checks as
``POST /dsls`` before the run is accepted (the router does that). The child:

- gets its options as data (``options.json``, :class:`service.onboarding.options.OnboardOptions`), never as
  flags: its command line holds only paths this module made;
- runs confined (:mod:`service.onboarding.confine`): lower priority than serving, a CPU-time and an address-space
  limit, and a minimal environment (no store credentials, no settings of the server's);
- is watched by a supervisor thread that stops it at its deadline (1.5 x budget + 300 s) whether or not
  anyone asks for its status, and reaps it when it ends (no zombies);
- is paused (``SIGSTOP`` to its process group) while other tenants' generations are in flight, and resumed
  when none are (``others_busy``, looked at every 50 ms). Lower priority was not enough: the engine's threads
  meet at a barrier many times a step, and a child that allocates memory, even under ``SCHED_IDLE``, made
  another tenant's ``/generate`` 15x slower (docs/SECURITY.md, 17); a pure CPU loop under ``SCHED_IDLE``
  cost 1.26x. Its own requests to the API do not pause it;
- leaves its folder (the team's files, the log, the status JSON of :mod:`service.onboarding.status`) for
  ``retention_s`` after it ended; then the supervisor removes it. What a tenant's runs keep on disk (run
  folders and work folders) counts against ``max_tenant_bytes``: a run that would pass it is refused (429).

One run at a time per replica, and one run per tenant, running or queued: a tenant's second run is a 409, and
another tenant's run waits in a queue (``queued``, at most ``max_queued``) rather than being refused while
one tenant's run holds the replica for up to 1.5 x its budget (docs/SECURITY.md, 17). The queue lives in this
replica's memory (the caller's key with it, never written down): a restart fails the runs it held. Checked,
queued and started under one lock. What a tenant
reads of a run (status, error, log lines) names files, never server paths, and a failure is one line of cause,
never a traceback. Runs live on the replica that started them; production runs the chart's Job instead
(templates/onboarding-job.yaml).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.config import PROJECT_ROOT
from service.errors import NotFound, OnboardingBusy, QuotaExceeded
from service.onboarding.options import OnboardOptions
from service.security import Caller
from service.store import owner_key

__all__ = ["OnboardingJobs", "RunLimits"]

#: How often the supervisor looks at the running child and the finished runs.
_SUPERVISE_S = 1.0
#: How often it looks whether other tenants' generations are in flight, to pause or resume the child.
_PAUSE_CHECK_S = 0.05
#: Seconds between SIGTERM and SIGKILL when a run is stopped.
_KILL_AFTER_S = 30.0
#: What the child may keep of the server's environment (nothing else: no credentials, no NL2DSL_* settings).
_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")
_TRACEBACK_LINE = re.compile(r"^(Traceback \(most recent call last\):|  File \"|    )")


@dataclass(frozen=True)
class RunLimits:
    """What one run may use: seconds of CPU per second of budget, memory, priority, disk, retention."""

    memory_mb: int = 8192
    nice: int = 10
    max_tenant_bytes: int = 1 << 30
    retention_s: float = 86_400.0
    max_queued: int = 16


class OnboardingJobs:
    """The runs under ``root``; ``url`` is this replica's own API, which the child calls."""

    def __init__(self, root: Path, *, url: str, cache_dir: Path, model: str | None = None,
                 limits: RunLimits = RunLimits(), others_busy: Callable[[str | None], bool] | None = None) -> None:
        self.root = Path(root)
        self.url = url
        self.cache_dir = Path(cache_dir)
        self.model = model
        self.limits = limits
        self._lock = threading.Lock()
        self._running: dict[str, subprocess.Popen] = {}
        self._tenants: dict[str, str | None] = {}  # the tenant of each run running or queued
        self._queue: list[tuple[str, list[str], float, str | None]] = []  # (id, command, budget_s, key), in order
        #: When each running child is stopped, whatever it is doing (its budget, and time to evaluate and report).
        self._deadlines: dict[str, float] = {}
        self._supervisor: threading.Thread | None = None
        #: Whether generations of tenants other than the given one are in flight (None: never pause).
        self.others_busy = others_busy
        self._paused: set[str] = set()
        self._closed = threading.Event()

    def start(self, name: str, grammar: str, pairs: str, options: OnboardOptions, *, caller: Caller,
              api_key: str | None) -> dict[str, Any]:
        """Write the team's files and start ``caller``'s run; its status at once (``state`` "running")."""
        tenant = options.tenant
        with self._lock:  # the one-run rules: checked and taken together
            if tenant in self._tenants.values():
                raise OnboardingBusy("your onboarding run is in progress or queued on this replica: try again when "
                                     "it ends", headers={"Retry-After": "60"})
            if len(self._queue) >= self.limits.max_queued:
                raise OnboardingBusy(f"{len(self._queue)} onboarding runs are queued on this replica: try again "
                                     "later", headers={"Retry-After": "60"})
            used = self.tenant_bytes(tenant)
            if used + len(grammar.encode()) + len(pairs.encode()) > self.limits.max_tenant_bytes:
                raise QuotaExceeded(f"your onboarding runs keep {used} bytes on this replica; at most "
                                    f"{self.limits.max_tenant_bytes}: delete a run or wait until it expires",
                                    detail={"limit": "onboarding_bytes", "max": self.limits.max_tenant_bytes})
            job_id = secrets.token_hex(8)
            folder = self.root / "runs" / job_id
            folder.mkdir(parents=True)
            (folder / "grammar.lark").write_text(grammar, encoding="utf-8")
            (folder / "pairs.jsonl").write_text(pairs, encoding="utf-8")
            (folder / "options.json").write_text(options.model_dump_json())
            (folder / "job.json").write_text(json.dumps({"id": job_id, "name": name, "tenant": tenant,
                                                         "created": time.time()}))
            self._tenants[job_id] = tenant
            self._queue.append((job_id, self.command(name, folder, self._work(tenant, name)), options.budget_s,
                                api_key))
            self._start_queued()
            self._supervise()
        return self.status(job_id, caller)

    def _start_queued(self) -> None:
        """Start the first queued run if no run is running (under the lock)."""
        if self._queue and not any(process.poll() is None for process in self._running.values()):
            job_id, command, budget_s, api_key = self._queue.pop(0)
            with (self.root / "runs" / job_id / "log.txt").open("wb") as log:
                self._running[job_id] = subprocess.Popen(
                    self.confined(command, budget_s=budget_s), stdout=log, stderr=subprocess.STDOUT,
                    env=self.environment(api_key), stdin=subprocess.DEVNULL, cwd=PROJECT_ROOT,
                    start_new_session=True)
            self._deadlines[job_id] = time.monotonic() + 1.5 * budget_s + 300

    def command(self, name: str, folder: Path, work: Path) -> list[str]:
        """The child's command line: ``nl2dsl onboard`` on the run's files, against this replica; every path
        made here, every option in ``options.json``."""
        return [sys.executable, "-m", "service.cli", "onboard", "--grammar", str(folder / "grammar.lark"),
                "--pairs", str(folder / "pairs.jsonl"), "--options", str(folder / "options.json"), "--name", name,
                "--url", self.url, "--work-dir", str(work), "--status", str(folder / "status.json")]

    def confined(self, command: list[str], *, budget_s: float) -> list[str]:
        """``command`` behind :mod:`service.onboarding.confine`: CPU time for its wall-clock bound on every core."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        cpu_s = int((1.5 * budget_s + 300) * cores)
        return [sys.executable, "-m", "service.onboarding.confine", "--cpu-s", str(cpu_s),
                "--memory-mb", str(self.limits.memory_mb), "--nice", str(self.limits.nice), "--", *command]

    def environment(self, api_key: str | None) -> dict[str, str]:
        """The child's whole environment: the basics, offline model hubs, where the model is, the caller's key."""
        env = {k: os.environ[k] for k in _ENVIRONMENT if k in os.environ}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
                   NL2DSL_CACHE_DIR=str(self.cache_dir))
        if self.model:
            env["NL2DSL_MODEL"] = self.model
        if api_key:
            env["NL2DSL_API_KEY"] = api_key
        return env

    def status(self, job_id: str, caller: Caller) -> dict[str, Any]:
        """The run's status: what the child last wrote, and whether it is still running (server paths hidden)."""
        self._supervise()
        folder, job = self._job(job_id, caller)
        status_path = folder / "status.json"
        try:
            status = json.loads(status_path.read_text())
        except (OSError, ValueError):
            status = {"state": "running", "stage": None, "progress": None, "report": None, "error": None}
        queued = [queued_id for queued_id, *_ in self._queue]
        if job_id in queued:
            return {**job, "state": "queued", "stage": None, "progress": None, "report": None, "error": None,
                    "queue_position": queued.index(job_id) + 1, "log": []}
        process = self._running.get(job_id)
        ended = process is None or process.poll() is not None
        log = (folder / "log.txt").read_text(errors="replace") if (folder / "log.txt").exists() else ""
        lines = [line.rsplit("\r", 1)[-1] for line in log.splitlines() if line.strip()]
        if ended and status.get("state") == "running":
            # The child ended without saying how (killed, out of CPU time, or this replica restarted under it).
            status["state"] = "failed"
            status["error"] = status.get("error") or _cause(lines) or "the run stopped before it finished"
        if not ended:
            status["paused"] = job_id in self._paused  # while other tenants' generations are in flight
        scrub = self._scrubber(folder, job)
        if status.get("error"):
            status["error"] = scrub(str(status["error"]).strip().splitlines()[-1])
        shown = [scrub(line) for line in lines if not _TRACEBACK_LINE.match(line)]
        return {**job, **status, "log": shown[-20:]}

    def report(self, job_id: str, filename: str, caller: Caller) -> Path:
        """``ONBOARDING.md`` / ``.png`` / ``.json`` of a run that has ended."""
        folder, job = self._job(job_id, caller)
        path = self._work(job["tenant"], job["name"]) / "report" / filename
        if not path.exists():
            raise NotFound(f"onboarding run {job_id} has no report yet", detail={"id": job_id})
        return path

    def cancel(self, job_id: str, caller: Caller) -> None:
        """Stop a run (its process group: the child and what it started); killed if still there 30 s later."""
        self._job(job_id, caller)
        with self._lock:
            if any(queued_id == job_id for queued_id, *_ in self._queue):
                self._queue = [entry for entry in self._queue if entry[0] != job_id]
                self._tenants.pop(job_id, None)
                (self.root / "runs" / job_id / "status.json").write_text(json.dumps(
                    {"state": "failed", "stage": None, "progress": None, "report": None,
                     "error": "cancelled before it started"}))
                return
        self._stop(job_id)

    def tenant_bytes(self, tenant: str | None) -> int:
        """What ``tenant``'s runs and work folders hold on this replica's disk."""
        folders = [self._work(tenant, "x").parent]
        runs = self.root / "runs"
        if runs.is_dir():
            for folder in runs.iterdir():
                try:
                    if json.loads((folder / "job.json").read_text()).get("tenant") == tenant:
                        folders.append(folder)
                except (OSError, ValueError):
                    continue
        return sum(p.stat().st_size for folder in folders if folder.is_dir()
                   for p in folder.rglob("*") if p.is_file())

    def supervise_once(self) -> None:
        """Reap ended children, stop the overdue, remove runs past their retention (the supervisor's round)."""
        now = time.monotonic()
        with self._lock:
            for job_id, process in list(self._running.items()):
                if process.poll() is not None:  # reaped: no zombie
                    self._running.pop(job_id, None)
                    self._deadlines.pop(job_id, None)
                    self._tenants.pop(job_id, None)
                    self._paused.discard(job_id)
                elif now > self._deadlines.get(job_id, float("inf")):
                    self._deadlines.pop(job_id, None)
                    self._stop(job_id)
            self._start_queued()
            running = set(self._running) | {queued_id for queued_id, *_ in self._queue}
        runs = self.root / "runs"
        for folder in runs.iterdir() if runs.is_dir() else ():
            if folder.name in running:
                continue
            ended = folder / "ended"  # when this replica first saw the run ended (a restart: now)
            if not ended.exists():
                ended.touch()
            elif time.time() - ended.stat().st_mtime > self.limits.retention_s:
                shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        self._closed.set()
        self._queue.clear()
        for job_id in list(self._running):
            self._stop(job_id)

    def _supervise(self) -> None:
        if self._supervisor is None or not self._supervisor.is_alive():
            self._supervisor = threading.Thread(target=self._supervisor_loop, name="nl2dsl-onboarding-supervisor",
                                                daemon=True)
            self._supervisor.start()

    def _supervisor_loop(self) -> None:
        last = 0.0
        while not self._closed.wait(_PAUSE_CHECK_S):
            self.pause_or_resume()
            if time.monotonic() - last < _SUPERVISE_S:
                continue
            last = time.monotonic()
            try:
                self.supervise_once()
            except OSError:  # a folder removed under it: the next round sees the new state
                continue

    def pause_or_resume(self) -> None:
        """Pause the running child while other tenants' generations are in flight; resume it when none are."""
        if self.others_busy is None:
            return
        with self._lock:
            for job_id, process in self._running.items():
                if process.poll() is not None:
                    continue
                busy = self.others_busy(self._tenants.get(job_id))
                if busy and job_id not in self._paused:
                    _signal(process, signal.SIGSTOP)
                    self._paused.add(job_id)
                elif not busy and job_id in self._paused:
                    _signal(process, signal.SIGCONT)
                    self._paused.discard(job_id)

    def _stop(self, job_id: str) -> None:
        process = self._running.get(job_id)
        if process is not None and process.poll() is None:
            _signal(process, signal.SIGTERM)
            _signal(process, signal.SIGCONT)  # a paused child would hold the SIGTERM until resumed
            self._paused.discard(job_id)
            timer = threading.Timer(_KILL_AFTER_S, _kill_if_running, args=(process,))
            timer.daemon = True
            timer.start()

    def _work(self, tenant: str | None, name: str) -> Path:
        return self.root / "work" / owner_key(tenant) / name

    def _job(self, job_id: str, caller: Caller) -> tuple[Path, dict[str, Any]]:
        """The run's folder and record; another tenant's run is as absent as one that never was."""
        folder = self.root / "runs" / job_id
        record = folder / "job.json"
        if not (len(job_id) == 16 and job_id.isalnum() and record.exists()):
            raise NotFound(f"no onboarding run {job_id!r}", detail={"id": job_id})
        job = json.loads(record.read_text())
        if not caller.may_manage(job["tenant"]):
            raise NotFound(f"no onboarding run {job_id!r}", detail={"id": job_id})
        return folder, job

    def _scrubber(self, folder: Path, job: dict[str, Any]):
        """Server paths in a line, replaced by what they are to the tenant: its files and "<service>"."""
        known = [(str(folder) + "/", ""), (str(self._work(job["tenant"], job["name"])) + "/", "work/"),
                 (str(self.root), "<onboarding>"), (str(self.cache_dir), "<cache>"), (sys.prefix, "<python>"),
                 (str(PROJECT_ROOT), "<service>"), (str(Path.home()), "<home>")]
        known.sort(key=lambda pair: -len(pair[0]))

        def scrub(line: str) -> str:
            for path, name in known:
                line = line.replace(path, name)
            return re.sub(r"(?<![\w<])/(?:[\w.-]+/)+([\w.-]+)", r"\1", line)  # any other absolute path: its name

        return scrub


def _cause(lines: list[str]) -> str | None:
    """The one line that says why a child ended: a traceback's last line, or the last line it wrote."""
    for line in reversed(lines):
        if not _TRACEBACK_LINE.match(line):
            return line
    return None


def _signal(process: subprocess.Popen, signum: int) -> None:
    """``signum`` to the child's process group (it may have ended meanwhile)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def _kill_if_running(process: subprocess.Popen) -> None:
    if process.poll() is None:
        _signal(process, signal.SIGKILL)
        process.wait()
