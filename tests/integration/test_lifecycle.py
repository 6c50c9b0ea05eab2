"""Process lifecycle: a start that fails and SIGTERM while the model loads (servers of their own), and SIGTERM
with requests in flight (the session server, at the end of the session). The per-tenant limit and an engine
that dies: tests/integration/test_replicas.py."""

from __future__ import annotations

import contextlib
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
from tests.conftest import ADMIN_KEY
from tests.helpers import listening_process, wait_in_flight

BODY = {"dsl": "flow", "text": "when a form is submitted, post the answers to #sales", "max_tokens": 64}
LONG = {"dsl": "flow", "adapter": "base", "text": "describe every connector you know", "constrained": False,
        "max_tokens": 1000, "examples": 0, "temperature": 1.0, "seed": 3}


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


def _names(process: psutil.Process) -> set[str]:
    """The names of ``process``'s descendants still running (vLLM names its own ``VLLM::...``)."""
    names = set()
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            names.add(child.name())
    return names


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
        while "VLLM::EngineCore" not in _names(process):  # the engine has started its own process
            assert time.monotonic() < deadline and spawned.process.poll() is None, spawned.log.read_text()[-3000:]
            time.sleep(0.2)
        # Loading: alive (Kubernetes must not restart it) and not ready (no traffic yet).
        health, ready = _get(f"{spawned.url}/healthz"), _get(f"{spawned.url}/readyz")
        assert health.status_code == 200 and health.json()["engine"] == "loading", health.text
        assert ready.status_code == 503, ready.text
        spawned.process.send_signal(signal.SIGTERM)
        seen = {}  # every process of the server's until it exits (the engine may still be starting its worker)
        while spawned.process.poll() is None:
            assert time.monotonic() < deadline, "the server did not exit after SIGTERM"
            seen.update({child.pid: child for child in process.children(recursive=True)})
            time.sleep(0.1)
        _, alive = psutil.wait_procs(list(seen.values()), timeout=10)  # an orphaned worker would load for minutes
        assert not alive, f"processes left running: {[(p.pid, p.name()) for p in alive]}"
    finally:
        spawned.stop()


@pytest.mark.stops_server  # run after every other test (tests/conftest.py)
def test_sigterm_stops_accepting_and_drains_within_the_drain_timeout(server):
    """SIGTERM to the session server with a short request streaming and a long one in flight: no new
    connections, the short one finishes, the long one is cut when the drain ends, and told so."""
    results: dict[str, object] = {}
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    first_delta = threading.Event()

    def long() -> None:
        try:
            results["long"] = httpx.post(f"{server.url}/generate", json={**LONG, "tenant": "b"}, headers=headers,
                                         timeout=300)
        except httpx.TransportError as exc:
            results["long"] = exc

    def short() -> None:
        events = []
        try:
            with httpx.stream("POST", f"{server.url}/generate", headers=headers, timeout=300,
                              json={**BODY, "tenant": "a", "max_tokens": 24, "stream": True}) as r:
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        events.append(line.removeprefix("event: "))
                        first_delta.set()
                results["short"] = (r.status_code, events)
        except httpx.TransportError as exc:
            results["short"] = exc
        finally:
            first_delta.set()

    threads = [threading.Thread(target=long)]
    threads[0].start()
    wait_in_flight(server.url, 1, server.log)  # the long one is being served
    threads.append(threading.Thread(target=short))
    threads[1].start()
    assert first_delta.wait(timeout=300) and "short" not in results, results  # the short one is streaming
    process = listening_process(server.url)
    process.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    with pytest.raises(httpx.TransportError):  # no new connections once draining
        httpx.post(f"{server.url}/generate", json=BODY, headers=headers, timeout=5)
    for thread in threads:
        thread.join(timeout=300)
    assert results["short"] == (200, [*["delta"] * (len(results["short"][1]) - 1), "result"]), results
    cut = results["long"]
    assert isinstance(cut, httpx.Response) and cut.status_code == 503, cut
    assert "shutting down" in cut.json()["error"]["message"]
    # uvicorn re-raises the signal after its graceful shutdown: exit by SIGTERM, not a crash and not a hang.
    assert process.wait(timeout=120) in (0, -signal.SIGTERM)
