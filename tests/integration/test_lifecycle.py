"""Process lifecycle on a server of its own: SIGTERM drains in-flight requests; a dead engine turns /readyz false."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from service.local_server import free_port

BODY = {"dsl": "flow", "text": "when a form is submitted, post the answers to #sales", "max_tokens": 64}


@pytest.fixture()
def own_server(tmp_path):
    """A fresh `nl2dsl serve` (no API keys) that a test may kill; yields (url, process)."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NL2DSL_AUTH": "off", "NL2DSL_PORT": str(port),
           "NL2DSL_HOST": "127.0.0.1", "NL2DSL_ADAPTERS_DIR": str(tmp_path)}
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while not _ready(url):
        assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "server not ready"
        time.sleep(1)
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_sigterm_lets_in_flight_requests_finish_then_exits(own_server):
    url, proc = own_server
    results = []
    worker = threading.Thread(target=lambda: results.append(httpx.post(f"{url}/generate", json=BODY, timeout=120)))
    worker.start()
    time.sleep(1.0)  # the request is in the engine
    proc.send_signal(signal.SIGTERM)
    worker.join(timeout=120)
    assert results and results[0].status_code == 200 and results[0].json()["code"]
    # uvicorn re-raises the signal after its graceful shutdown: exit by SIGTERM, not a crash and not a hang.
    assert proc.wait(timeout=90) in (0, -signal.SIGTERM)


def test_a_dead_engine_turns_readyz_false_and_requests_get_503(own_server):
    url, proc = own_server
    engine_processes = psutil.Process(proc.pid).children(recursive=True)
    assert engine_processes
    for child in engine_processes:
        child.kill()
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/readyz", timeout=5).status_code != 503:
        assert time.monotonic() < deadline, "/readyz still 200 after the engine died"
        time.sleep(0.5)
    r = httpx.post(f"{url}/generate", json=BODY, timeout=10)  # answered at once, not after a hang
    assert r.status_code == 503 and r.json()["error"]["type"] == "engine_unavailable"
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 503  # liveness fails: Kubernetes restarts it
