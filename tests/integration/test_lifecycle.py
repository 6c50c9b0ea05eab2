"""Process lifecycle on servers of their own: the probes while the model loads, a start that fails, the
per-tenant limit over HTTP, SIGTERM (drain, and while the model loads). An engine that dies:
tests/integration/test_replicas.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from service.local_server import free_port

BODY = {"dsl": "flow", "text": "when a form is submitted, post the answers to #sales", "max_tokens": 64}
LONG = {"dsl": "flow", "adapter": "base", "text": "describe every connector you know", "constrained": False,
        "max_tokens": 1000, "examples": 0, "temperature": 1.0, "seed": 3}
DRAIN_S = 10


@dataclass
class Spawned:
    url: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def _spawn(folder: Path, **env: str) -> Spawned:
    """`nl2dsl serve` (no API keys) with ``NL2DSL_*`` overrides; returns at once, while the model loads."""
    port = free_port()
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "NL2DSL_AUTH": "off", "NL2DSL_PORT": str(port),
                "NL2DSL_HOST": "127.0.0.1", "NL2DSL_ADAPTERS_DIR": str(folder), **env}
    log = folder / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], env=full_env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return Spawned(f"http://127.0.0.1:{port}", process, log)


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.TransportError:
        return None


def _wait_ready(spawned: Spawned, observed: list | None = None, timeout: float = 300) -> None:
    """Poll the probes until /readyz is 200, recording ``(healthz status, engine, readyz status)``."""
    deadline = time.monotonic() + timeout
    while True:
        assert spawned.process.poll() is None, spawned.log.read_text()[-3000:]
        assert time.monotonic() < deadline, "server not ready"
        health, ready = _get(f"{spawned.url}/healthz"), _get(f"{spawned.url}/readyz")
        if health is not None and ready is not None:
            if observed is not None:
                observed.append((health.status_code, health.json().get("engine"), ready.status_code))
            if ready.status_code == 200:
                return
        time.sleep(0.5)


def _wait_in_flight(spawned: Spawned, count: int, timeout: float = 60) -> None:
    """Poll /metrics until ``nl2dsl_requests_in_flight`` reaches ``count``."""
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(f"{spawned.url}/metrics", timeout=5).text
        line = next(line for line in text.splitlines() if line.startswith("nl2dsl_requests_in_flight "))
        if float(line.split()[1]) >= count:
            return
        assert time.monotonic() < deadline, f"never {count} requests in flight: {line}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """A server allowing one request per tenant and a short drain, with the probes it answered while loading.
    The module's last test stops it with SIGTERM."""
    spawned = _spawn(tmp_path_factory.mktemp("limited"), NL2DSL_TENANT_MAX_CONCURRENCY="1",
                     NL2DSL_DRAIN_TIMEOUT_S=str(DRAIN_S))
    observed: list = []
    try:
        _wait_ready(spawned, observed)
        yield spawned, observed
    finally:
        spawned.stop()


def test_while_the_model_loads_healthz_is_200_and_readyz_503(limited):
    spawned, observed = limited
    assert (200, "loading", 503) in observed, observed
    assert observed[-1][2] == 200 and httpx.get(f"{spawned.url}/healthz", timeout=5).json()["engine"] == "running"


def test_a_tenant_over_its_concurrency_gets_429_with_retry_after(limited):
    spawned, _ = limited
    with httpx.Client(base_url=spawned.url, timeout=300) as client:
        first = threading.Thread(target=lambda: client.post("/generate", json={**BODY, "tenant": "t1"}))
        first.start()
        _wait_in_flight(spawned, 1)  # t1's request is being served
        refused = client.post("/generate", json={**BODY, "tenant": "t1"})
        other = client.post("/generate", json={**BODY, "tenant": "t2", "max_tokens": 8})
        first.join(timeout=300)
    assert refused.status_code == 429 and refused.json()["error"]["detail"]["limit"] == "tenant"
    assert int(refused.headers["retry-after"]) >= 1
    assert other.status_code == 200  # other tenants are not held back


def test_sigterm_stops_accepting_and_drains_within_the_drain_timeout(limited):
    """The module's last test: it stops the server."""
    spawned, _ = limited
    results: dict[str, object] = {}

    def send(name: str, body: dict) -> None:
        try:
            results[name] = httpx.post(f"{spawned.url}/generate", json=body, timeout=300)
        except httpx.TransportError as exc:
            results[name] = exc

    threads = [threading.Thread(target=send, args=("short", {**BODY, "tenant": "a", "max_tokens": 24})),
               threading.Thread(target=send, args=("long", {**LONG, "tenant": "b"}))]
    for thread in threads:
        thread.start()
    _wait_in_flight(spawned, 2)  # both are being served (a fixed sleep was once too short on a busy CI machine)
    spawned.process.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    with pytest.raises(httpx.TransportError):  # no new connections once draining
        httpx.post(f"{spawned.url}/generate", json=BODY, timeout=5)
    for thread in threads:
        thread.join(timeout=300)
    assert isinstance(results["short"], httpx.Response) and results["short"].status_code == 200
    # 1000 tokens take far longer than the drain allows: the long request is cut when the drain ends, and told so.
    cut = results["long"]
    assert isinstance(cut, httpx.Response) and cut.status_code == 503, cut
    assert "shutting down" in cut.json()["error"]["message"]
    # uvicorn re-raises the signal after its graceful shutdown: exit by SIGTERM, not a crash and not a hang.
    assert spawned.process.wait(timeout=120) in (0, -signal.SIGTERM)


def test_an_engine_that_fails_to_start_turns_both_probes_503(tmp_path):
    spawned = _spawn(tmp_path, NL2DSL_MAX_MODEL_LEN="10000000")  # longer than the model can take
    try:
        deadline = time.monotonic() + 300
        while (health := _get(f"{spawned.url}/healthz")) is None or health.status_code != 503:
            assert spawned.process.poll() is None, spawned.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "/healthz never reported the failed start"
            time.sleep(0.5)
        ready = _get(f"{spawned.url}/readyz")
        assert ready.status_code == 503 and "failed to start" in ready.json()["error"]["message"]
        assert str(Path.home()) not in health.text + ready.text
    finally:
        spawned.stop()


def test_sigterm_while_the_model_loads_leaves_no_engine_process(tmp_path):
    spawned = _spawn(tmp_path)
    process = psutil.Process(spawned.process.pid)
    try:
        deadline = time.monotonic() + 300
        while not (children := process.children(recursive=True)):  # the engine's processes are starting
            assert time.monotonic() < deadline and spawned.process.poll() is None, spawned.log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)
        assert _get(f"{spawned.url}/readyz").status_code == 503  # still loading
        children = process.children(recursive=True)
        spawned.process.send_signal(signal.SIGTERM)
        spawned.process.wait(timeout=300)
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"engine processes left running: {[p.pid for p in alive]}"
    finally:
        spawned.stop()
