"""Start the service in a subprocess on a free loopback port and wait until it is ready.

Used where a real server is needed without a running one: the integration tests, ``nl2dsl eval``,
benchmarks and load tests. The server's output goes to a log file; the process group is stopped on exit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

__all__ = ["free_port", "local_server"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_server(*, env: dict[str, str] | None = None, log: Path, timeout: float = 300.0,
                 poll_s: float = 0.2) -> Iterator[str]:
    """Run ``nl2dsl serve`` with ``NL2DSL_*`` overrides in ``env``; yields its base URL once /readyz is 200.

    The server listens on loopback only and, unless ``env`` sets ``NL2DSL_AUTH``, without API keys
    (development mode: evaluation, benchmarks and load tests of a local server).
    """
    port = free_port()
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "NL2DSL_AUTH": "off", **(env or {}), "NL2DSL_PORT": str(port),
                "NL2DSL_HOST": "127.0.0.1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], env=full_env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready after {timeout:.0f} s:\n{log.read_text()[-4000:]}")
            time.sleep(poll_s)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
