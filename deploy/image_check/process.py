"""Progress lines, commands and the limits containers get here, and where the check keeps its files."""

from __future__ import annotations

import resource
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REPORTS = ROOT / "reports" / "image-check"
#: crun 1.8 (Debian 12) refuses hosts with cgroup v1 and v2 mounted side by side ("hybrid"); runc runs anywhere.
RUNTIME = "runc"


def say(message: str) -> None:
    print(f"[image-check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(*command: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=check, text=True, capture_output=True, **kwargs)


def _ulimits() -> list[str]:
    """podman's default open-files and process limits, lowered to this machine's hard limits where they are
    lower (raising a hard limit is refused in some sandboxes, this one among them)."""
    limits = []
    for name, which, default in (("nofile", resource.RLIMIT_NOFILE, 1048576), ("nproc", resource.RLIMIT_NPROC, 32768)):
        hard = resource.getrlimit(which)[1]
        value = default if hard == resource.RLIM_INFINITY else min(default, hard)
        limits += ["--ulimit", f"{name}={value}:{value}"]
    return limits


def podman_run(*options: str) -> list[str]:
    """``podman run`` on this machine (its runtime and limits) with ``options``, image and arguments after them."""
    return ["podman", "run", "--runtime", RUNTIME, *_ulimits(), *options]
