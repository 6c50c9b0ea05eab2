"""Start-up takes turns importing: the engine's thread imports vLLM holding ``IMPORT_LOCK``, and the request path
is built holding it too. Two threads importing transformers at once met a half-imported accelerate module when
the image first ran (an ImportError at start-up, docs/DEPLOY.md)."""

from __future__ import annotations

import sys
import types

import service.app as app_module
from service.config import Settings
from service.engine.core import IMPORT_LOCK, _start_async_llm


def test_the_request_path_is_built_holding_the_import_lock(make_client, monkeypatch):
    held: list[bool] = []
    build = app_module.build_serving

    def recording(settings, slot=None, **store):
        held.append(IMPORT_LOCK.locked())
        return build(settings, slot, **store)

    monkeypatch.setattr(app_module, "build_serving", recording)
    with make_client() as client:
        assert client.get("/healthz").status_code == 200
    assert held == [True]
    assert not IMPORT_LOCK.locked()


def test_the_engine_thread_imports_vllm_holding_the_import_lock(monkeypatch):
    held: dict[str, bool] = {}

    def module(name: str, attribute: str, value) -> types.ModuleType:
        fake = types.ModuleType(name)

        def getattr_(wanted: str):  # what `from name import attribute` reads
            held[attribute] = IMPORT_LOCK.locked()
            return value if wanted == attribute else None

        fake.__getattr__ = getattr_
        return fake

    class AsyncLLM:
        @staticmethod
        def from_engine_args(args, stat_loggers=None):
            held["from_engine_args"] = IMPORT_LOCK.locked()  # starting the engine itself: the lock is free again
            return "engine"

    monkeypatch.setattr("service.engine.core.prometheus_logger", lambda: "logger")
    monkeypatch.setitem(sys.modules, "vllm.engine.arg_utils", module("arg_utils", "AsyncEngineArgs", dict))
    monkeypatch.setitem(sys.modules, "vllm.v1.engine.async_llm", module("async_llm", "AsyncLLM", AsyncLLM))
    for name in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND"):  # what it sets is undone afterwards
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)

    assert _start_async_llm(Settings(), "/models/m") == "engine"
    assert held == {"AsyncEngineArgs": True, "AsyncLLM": True, "from_engine_args": False}


def test_the_request_path_is_given_its_adapter_residency_when_it_is_built(make_client):
    """No wiring after construction: the serving object is made with the residency the store's adapters need."""
    with make_client() as client:
        serving = client.app.state.serving
        assert serving.residency is not None and serving.residency.registry is serving.adapters
        assert client.app.state.adapter_publisher.residency is serving.residency
