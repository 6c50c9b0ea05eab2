"""bench/coldstart.py reads a start's phases from the service's log: the phases cover spawn to ready once each,
in order, from the service's millisecond lines and vLLM's whole-second ones."""

from __future__ import annotations

from datetime import datetime

import pytest

from bench.coldstart import phases

LOG = """\
INFO:     Started server process [1]
2026-12-03 07:00:01,500 INFO nl2dsl starting the engine
(MainProcess pid=1) INFO 12-03 07:00:08 [model.py:733] Resolved architecture: LlamaForCausalLM
(EngineCore pid=2) INFO 12-03 07:00:14 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: ...
(Worker pid=3) INFO 12-03 07:00:21 [cpu_model_runner.py:68] Starting to load model /models/x...
(Worker pid=3) INFO 12-03 07:00:22 [default_loader.py:501] Loading weights took 0.93 seconds
(EngineCore pid=2) INFO 12-03 07:00:23 [core.py:402] init engine (profile, create kv cache, warmup model) took 1.7 s
2026-12-03 07:00:25,250 INFO nl2dsl engine ready in 23.0 s (warm-up 0.7 s)
"""


def _at(clock: str) -> float:
    return datetime.strptime(f"2026-12-03 {clock}", "%Y-%m-%d %H:%M:%S.%f").timestamp()


def test_phases_cover_spawn_to_ready_in_order():
    spawned, ready = _at("07:00:00.000"), _at("07:00:25.400")
    found = phases(LOG, spawned, ready)
    assert list(found) == [
        "Python imports and app set-up", "vLLM import and engine configuration",
        "engine-core process: spawn and imports", "model runner set-up (a worker process: its spawn and imports)",
        "model weights",
        "profile run, KV cache, engine warm-up", "engine handed over, first grammar + adapter generation",
        "store sync and the first ready answer",
    ]
    assert found["Python imports and app set-up"] == pytest.approx(1.5)
    assert found["model runner set-up (a worker process: its spawn and imports)"] == pytest.approx(7.0)
    assert found["store sync and the first ready answer"] == pytest.approx(0.15, abs=1e-3)
    assert sum(found.values()) == pytest.approx(ready - spawned)


def test_a_phase_missing_from_the_log_is_left_out_not_invented():
    log = "\n".join(line for line in LOG.splitlines() if "Loading weights" not in line)
    found = phases(log, _at("07:00:00.000"), _at("07:00:25.400"))
    assert "model weights" not in found
    assert found["profile run, KV cache, engine warm-up"] == pytest.approx(2.0)  # from the worker's first line


def test_the_model_runner_phase_ends_in_the_engine_core_when_it_computes_the_model():
    """One engine process (NL2DSL_CPU_ONE_PROCESS): the engine core loads the model itself, no worker line."""
    log = LOG.replace("(Worker pid=3)", "(EngineCore pid=2)")
    found = phases(log, _at("07:00:00.000"), _at("07:00:25.400"))
    assert found["model runner set-up (a worker process: its spawn and imports)"] == pytest.approx(7.0)
    assert sum(found.values()) == pytest.approx(25.4)
