"""One real service per test run: `nl2dsl serve` (uvicorn + vLLM on the embedded model) in a subprocess.

The engine runs in float32 so adapter outputs can be compared token for token with peft + transformers
(ENVIRONMENT.md: bf16 random adapters drift by rounding). Adapters are made here, in a temporary folder:
two random ones, and one that claims another base model.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.model import resolve_model
from tests.helpers import make_random_adapter

STARTUP_TIMEOUT_S = 300


@dataclass
class Server:
    url: str
    model_dir: str
    adapters_dir: Path
    log: Path

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 120), **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    model_dir = resolve_model(None, Settings().cache_dir)
    adapters = tmp_path_factory.mktemp("adapters")
    make_random_adapter(model_dir, adapters / "alpha", seed=1, tenants=["alpha-corp"])
    make_random_adapter(model_dir, adapters / "beta", seed=2, dsl="flow")
    make_random_adapter(model_dir, adapters / "other-base", seed=3)
    manifest = (adapters / "other-base" / "manifest.yaml").read_text()
    fingerprint = manifest.split("fingerprint: ")[1].split()[0]
    (adapters / "other-base" / "manifest.yaml").write_text(manifest.replace(fingerprint, "feedfacefeedface"))

    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "NL2DSL_PORT": str(port),
        "NL2DSL_DTYPE": "float32",
        "NL2DSL_ADAPTERS_DIR": str(adapters),
        "NL2DSL_MAX_LORAS": "2",
        "NL2DSL_LOG_LEVEL": "info",
    }
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield Server(url=url, model_dir=model_dir, adapters_dir=adapters, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture()
def client(server):
    with server.client() as c:
        yield c
