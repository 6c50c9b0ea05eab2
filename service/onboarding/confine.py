"""Run a command confined: ``python -m service.onboarding.confine --cpu-s N --memory-mb M --nice K -- CMD...``.

The onboarding child runs on a serving replica. Before it becomes ``nl2dsl onboard`` (``exec``: the same
process, so the parent's kill and reap reach it) it lowers its priority below serving: Linux's ``SCHED_IDLE``
policy, which runs it only on CPU time nothing else wants (at nice 10 alone, a run's dataset check took 66
CPU-seconds in ~80 s while another tenant's ``/generate`` went from 0.9 s to 8-29 s: docs/SECURITY.md, 17),
and ``nice`` where that policy does not exist; it caps its
CPU time (``RLIMIT_CPU``: the kernel sends SIGXCPU, then kills it) and its address space (``RLIMIT_AS``: an
allocation past it fails inside the child, never the OOM killer choosing the server or the engine). Limits
set here are inherited by everything the child starts.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.onboarding.confine")
    parser.add_argument("--cpu-s", type=int, required=True)
    parser.add_argument("--memory-mb", type=int, required=True)
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    os.nice(args.nice)
    if hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    resource.setrlimit(resource.RLIMIT_CPU, (args.cpu_s, args.cpu_s + 5))
    memory = args.memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
