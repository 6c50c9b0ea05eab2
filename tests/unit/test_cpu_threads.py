"""Which cores the CPU engine computes on (service.engine.cpu.cpu_threads_bind): vLLM's VLLM_CPU_OMP_THREADS_BIND."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service.engine.cpu import cpu_threads_bind


@pytest.mark.parametrize("cores,expected", [({0, 1}, "0-1"), ({0, 1, 2, 3}, "0-3"), (set(range(16)), "auto")])
def test_the_default_computes_on_every_core_of_a_small_machine_and_leaves_vllm_its_rule_on_a_large_one(
        cores, expected):
    assert cpu_threads_bind(None, cores=cores) == expected


@pytest.mark.parametrize("cores,expected", [({3}, "3"), ({0, 1, 2, 5, 6, 9}, "0-2,5-6,9"), ({1, 3, 4}, "1,3-4")])
def test_all_names_exactly_the_cores_this_process_may_use(cores, expected):
    assert cpu_threads_bind("all", cores=cores) == expected


@pytest.mark.parametrize("setting", ["auto", "nobind", "0-6", "0-3|4-7"])
def test_any_other_setting_goes_to_vllm_as_written(setting):
    assert cpu_threads_bind(setting, cores={0, 1}) == setting


@pytest.mark.parametrize("setting,compiler,compiles", [(True, "/usr/bin/g++", True), (True, None, False),
                                                       (False, "/usr/bin/g++", False)])
def test_the_cpu_engine_compiles_when_asked_and_a_cpp_compiler_is_there(monkeypatch, setting, compiler, compiles):
    """An image without g++ serves eager instead of failing at its first start (inductor compiles C++)."""
    from service.config import Settings
    from service.engine import cpu

    monkeypatch.setattr(cpu.shutil, "which", lambda name: compiler)
    assert cpu.compiles(Settings(cpu_compile=setting)) is compiles


@pytest.mark.parametrize("setting,native,compiled,expected", [
    ("auto", True, True, "bfloat16"), ("auto", False, True, "float32"), ("auto", True, False, "float32"),
    ("float32", True, True, "float32"), ("bfloat16", False, False, "bfloat16")])
def test_the_cpu_engine_computes_in_bfloat16_only_where_the_cpu_has_it_and_the_model_is_compiled(
        monkeypatch, setting, native, compiled, expected):
    """``auto`` picks bfloat16 where it was measured faster with the same outputs (native bfloat16, compiled);
    eager bfloat16 and emulated bfloat16 are slower than float32. A setting other than ``auto`` is kept."""
    from service.engine import cpu

    monkeypatch.setattr(cpu, "native_bfloat16", lambda: native)
    assert cpu.dtype(setting, compiled=compiled) == expected


@pytest.mark.parametrize("bind,setting,expected", [
    ("0-1", True, True), ("nobind", True, True), ("auto", True, False), ("0-3|4-7", True, False),
    ("0-1", False, False)])
def test_the_cpu_engine_computes_in_its_engine_core_process_for_one_set_of_cores(bind, setting, expected):
    """One process (``cpu_one_process``) for a list of cores or none; vLLM's "auto" rule and per-worker lists
    ("|") split cores between worker processes, and keep them."""
    from service.config import Settings
    from service.engine import cpu

    assert cpu.one_process(Settings(cpu_one_process=setting), bind) is expected


def test_the_engine_core_process_starts_on_the_bound_cores_with_a_thread_each_and_all_is_put_back(monkeypatch):
    """The engine-core process inherits the environment and the cores of the thread that spawns it."""
    import threading

    from service.engine import cpu

    cores = sorted(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    seen = {}

    def spawner() -> None:
        with cpu.engine_core_threads(str(cores[-1])):
            seen["inside"] = (os.environ["OMP_NUM_THREADS"], os.sched_getaffinity(0))
            seen["child"] = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                                           capture_output=True, text=True, check=True).stdout.strip()
        seen["after"] = (os.environ["OMP_NUM_THREADS"], sorted(os.sched_getaffinity(0)))

    thread = threading.Thread(target=spawner)
    thread.start()
    thread.join()
    assert seen == {"inside": ("1", {cores[-1]}), "child": str([cores[-1]]), "after": ("7", cores)}
    assert sorted(os.sched_getaffinity(0)) == cores  # other threads were never confined


@pytest.mark.parametrize("bind", [None, "nobind"])
def test_nothing_is_confined_for_two_processes_or_nobind(monkeypatch, bind):
    from service.engine import cpu

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = os.sched_getaffinity(0)
    with cpu.engine_core_threads(bind):
        assert "OMP_NUM_THREADS" not in os.environ and os.sched_getaffinity(0) == cores
