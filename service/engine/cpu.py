"""The engine's CPU choices: which cores it computes on, in how many processes, compiled or eager, in what dtype.

Each is a setting (service.config) with a measured default (docs/bench/history/2026-12-06.md: "CPU threads", "One engine
process", "bfloat16 on the CPU"); :func:`service.engine.core.open_engine` asks these functions before it starts
vLLM. On a GPU they leave vLLM's own choices alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil

from service.config import Settings
from service.cpu_features import native_bfloat16

__all__ = ["compiles", "cpu_threads_bind", "dtype", "engine_core_threads", "one_process"]

#: Up to this many cores, every core computes the model: vLLM's own rule ("auto") keeps one core per worker for
#: its scheduler, which on the 2-core default left the model one core (docs/bench/history/2026-12-06.md, "CPU threads").
_ALL_CORES_UP_TO = 4

log = logging.getLogger("nl2dsl.engine")


def one_process(settings: Settings, bind: str) -> bool:
    """Whether the CPU engine computes the model in its engine-core process (``cpu_one_process``, service.config):
    for one set of cores, not for vLLM's "auto" rule, which splits NUMA nodes between workers."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu() and settings.cpu_one_process and bind != "auto" and "|" not in bind


@contextlib.contextmanager
def engine_core_threads(bind: str | None):
    """Start the engine-core process, while in this block, on the cores of ``bind`` (a list such as "0-3,8") with
    an OpenMP thread for each: it inherits the environment and the spawning thread's cores. OpenMP's own binding
    (GOMP_CPU_AFFINITY, as vLLM binds its worker) would pin every later thread of the process, its I/O threads
    too, to the first core; confined but free, the measured time per token is the same
    (docs/bench/history/2026-12-06.md)."""
    if not bind or bind == "nobind":
        yield
        return
    cores = {core for part in bind.split(",")
             for first, _, last in [part.partition("-")] for core in range(int(first), int(last or first) + 1)}
    threads, spawner_cores = os.environ.get("OMP_NUM_THREADS"), os.sched_getaffinity(0)
    os.environ["OMP_NUM_THREADS"] = str(len(cores))
    os.sched_setaffinity(0, cores)  # this thread's, which the process it spawns inherits
    try:
        yield
    finally:
        os.sched_setaffinity(0, spawner_cores)
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = threads


def cpu_threads_bind(setting: str | None, *, cores: set[int] | None = None) -> str:
    """vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` for a ``setting`` (service.config): "all" is every core this process
    may run on (``cores``: that set); None applies the measured rule (docs/bench/history/2026-12-06.md, "CPU
    threads")."""
    cores = cores if cores is not None else os.sched_getaffinity(0)
    if setting is None:
        setting = "all" if len(cores) <= _ALL_CORES_UP_TO else "auto"
    if setting != "all":
        return setting
    ranges: list[str] = []  # "0-3,8" for cores 0, 1, 2, 3 and 8
    for core in sorted(cores):
        first, _, last = ranges[-1].partition("-") if ranges else ("", "", "")
        if ranges and int(last or first) + 1 == core:
            ranges[-1] = f"{first}-{core}"
        else:
            ranges.append(str(core))
    return ",".join(ranges)


def compiles(settings: Settings) -> bool:
    """Whether the engine compiles the model: ``cpu_compile`` (service.config), and on the CPU a C++ compiler for
    inductor's kernels (an image without one serves eager rather than failing at start)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return True
    if settings.cpu_compile and not shutil.which(os.environ.get("CXX", "g++")):
        log.warning("no C++ compiler (g++ or $CXX) for torch.compile: the engine runs eager, slower per token")
        return False
    return settings.cpu_compile


def dtype(configured: str, *, compiled: bool) -> str:
    """The precision the engine computes in. ``auto``: the checkpoint's on a GPU; on the CPU bfloat16 where the CPU
    has it natively and the model is compiled (as fast or faster a token, same outputs:
    docs/bench/history/2026-12-06.md, "bfloat16 on the CPU"), float32 elsewhere (eager bfloat16 falls back to slow
    matrix products)."""
    if configured != "auto":
        return configured
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return "auto"
    return "bfloat16" if compiled and native_bfloat16() else "float32"
