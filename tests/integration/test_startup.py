"""Start-up on servers of their own (no session server): a start that fails, and SIGTERM while the model loads."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from service.local_server import free_port


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
