"""The build (with this machine's pip configuration) and what the image holds."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from deploy.image_check.process import ROOT, RUNTIME, podman_run, run, say

#: pip settings carried into the build; files are copied next to pip.conf, local indexes mounted read-only.
_PIP_FILES = ("cert", "constraint")
_PIP_LOCATIONS = ("index-url", "extra-index-url", "find-links")
_PIP_PLAIN = ("trusted-host", "default-timeout", "timeout", "retries")


def pip_build_config(listing: str, out: Path) -> list[str]:
    """``podman build`` volume options that give the build this machine's pip configuration.

    ``listing`` is what ``pip config list`` prints (``global.cert='/x'``, ``:env:.find-links='/y'``). Writes
    ``out/pip.conf`` (mounted as /etc/xdg/pip, which pip reads) with copies of the files it names; local
    folders are mounted read-only where the configuration says they are (a local index with its parent, where
    its pages' files usually lie: ``/opt/pypi/simple`` links to ``/opt/pypi/files``). No configuration: no options.
    """
    settings: dict[str, str] = {}
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            settings[key.rsplit(".", 1)[-1]] = value.strip().strip("'\"")
    folders: list[str] = []
    conf: list[str] = []
    for name, value in settings.items():
        if name in _PIP_FILES and Path(value).is_file():
            shutil.copy(value, out / Path(value).name)
            conf.append(f"{name} = /etc/xdg/pip/{Path(value).name}")
        elif name in _PIP_LOCATIONS:
            for location in value.split():
                path = location.removeprefix("file://")
                if path.startswith("/") and Path(path).exists():
                    index = name != "find-links" or not Path(path).is_dir()
                    folders.append(str(Path(path).parent) if index else path)
            conf.append(f"{name} = {value}")
        elif name in _PIP_PLAIN:
            conf.append(f"{name} = {value}")
    if not conf:
        return []
    (out / "pip.conf").write_text("[global]\n" + "\n".join(conf) + "\n")
    volumes = ["--volume", f"{out}:/etc/xdg/pip:ro"]
    for folder in dict.fromkeys(folders):
        volumes += ["--volume", f"{folder}:{folder}:ro"]
    return volumes


def build(tag: str, flavor: str, base_arg: str, log: Path) -> float:
    """Build ``flavor`` with ``base_arg`` (NAME=image); progress is the Dockerfile's steps. Returns the seconds."""
    with tempfile.TemporaryDirectory(prefix="nl2dsl-pip-") as tmp:
        listing = run(sys.executable, "-m", "pip", "config", "list").stdout
        pip_volumes = pip_build_config(listing, Path(tmp))
        os.chmod(tmp, 0o755)
        # --format docker: OCI images have no HEALTHCHECK, and the Dockerfile's must survive.
        command = ["podman", "build", "--runtime", RUNTIME, "--network", "host", "--format", "docker",
                   "--build-arg", f"FLAVOR={flavor}", "--build-arg", base_arg, *pip_volumes,
                   "--tag", tag, str(ROOT)]
        say(f"podman build (log: {log.relative_to(ROOT)}) ...")
        started = time.monotonic()
        with log.open("w") as out:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in process.stdout:
                out.write(line)
                if re.match(r"\[\d+/\d+\] STEP", line):
                    say("  " + line.strip()[:110])
            if process.wait() != 0:
                raise SystemExit(f"podman build failed: see {log}")
    return time.monotonic() - started


_INSPECT = """
import importlib.metadata as md, json, os, re, shutil, sys
norm = lambda name: re.split(r"[\\[<>=!~; (]", name, maxsplit=1)[0].lower().replace("_", "-")
dev = set(sys.argv[1].split(","))
installed = {norm(d.metadata["Name"]) for d in md.distributions()}
needed = {norm(r) for d in md.distributions() for r in d.requires or () if "extra ==" not in r}
print(json.dumps({
    "compilers": [c for c in ("gcc", "cc", "c++", "clang", "make", "ld") if shutil.which(c)],
    "test_packages": sorted(dev & installed - needed),  # openai is a dev dependency and one of vLLM's
    "pip_caches": [p for p in ("/root/.cache/pip", "/home/nl2dsl/.cache", "/tmp/pip-cache") if os.path.exists(p)],
    "python": sys.version.split()[0],
}))
"""


def dev_packages() -> list[str]:
    """The project's test and development dependencies (pyproject's ``dev`` extra), by distribution name."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    return [re.split(r"[\[<>=!~; ]", spec, maxsplit=1)[0].lower().replace("_", "-") for spec in extras]


def inspect_image(tag: str) -> dict:
    """Size, what must not be in it, and the largest installed packages."""
    size = int(run("podman", "image", "inspect", "--format", "{{.Size}}", tag).stdout)
    as_root = podman_run("--rm", "--user", "0", "--entrypoint")
    found = json.loads(run(*as_root, "python", tag, "-c", _INSPECT, ",".join(dev_packages())).stdout)
    largest = run(*as_root, "sh", tag, "-c",
                  "du -sm /opt/venv/lib/python3*/site-packages/* /opt/nl2dsl | sort -n | tail -8").stdout
    found["size_mb"] = round(size / 1e6)
    found["largest_mb"] = {Path(p).name: int(mb) for mb, p in (line.split() for line in largest.splitlines())}
    return found
