"""Build the cpu image and run it as the Helm chart would: ``make image-check`` (docs/DEPLOY.md).

1. base: no registry is reachable here, so the Dockerfile's Python base (its Debian release and Python version,
   read from ``ARG PYTHON_IMAGE``) is made with debootstrap and imported into podman, once.
2. build: ``podman build`` of the Dockerfile as it is, with ``FLAVOR=cpu`` and ``PYTHON_IMAGE=<that base>``.
   The build machine's pip configuration (mirrors, CA bundle, constraints) goes in as read-only mounts, as a
   build behind a company mirror would need; nothing of it stays in the image.
3. lean: the image's size, and no compiler, pip cache or test dependency in it.
4. run: the chart's cpu profile rendered by helm; its Deployment's container becomes a ``podman run`` (user,
   read-only root filesystem, dropped capabilities, no privilege escalation, emptyDirs as empty folders on a tmpfs,
   the Secret and the ConfigMap as read-only files, its env, args and limits).
5. ready: ``/readyz`` timed from ``podman run``, and the image's own HEALTHCHECK.
6. use: a tenant publishes a DSL (the store and the grammar sandbox write, to the emptyDirs only), then asks for
   flow, sql and its own DSL with its key; the code is parsed here, with the same grammars.
7. drain: SIGTERM with generations in flight: each one finishes, new connections are refused, the exit code is 0.

``--flavor gpu`` builds the gpu flavour on a debootstrapped stand-in for the CUDA image (its Ubuntu release,
without CUDA's own libraries) and checks what runs without a GPU: the install, the imports, ``nl2dsl serve``'s
answer. Writes reports/image-check/ (build and container logs, result-<flavor>.json); exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / ".tools" / "bin" / "helm"
CHART = ROOT / "deploy" / "helm" / "nl2dsl"
PROFILE = ROOT / "deploy" / "helm" / "profiles" / "cpu.yaml"
REPORTS = ROOT / "reports" / "image-check"
#: crun 1.8 (Debian 12) refuses hosts with cgroup v1 and v2 mounted side by side ("hybrid"); runc runs anywhere.
RUNTIME = "runc"
TENANT = "image-check"
#: A grammar a tenant publishes at run time (POST /dsls): the store and the grammar sandbox write, under a
#: read-only root filesystem, to the emptyDirs only.
JSON_DSL = {
    "name": "json",
    "grammar": '?start: value\n?value: object | array | ESCAPED_STRING | SIGNED_NUMBER -> number\n'
               '  | "true" -> true | "false" -> false | "null" -> null\narray: "[" [value ("," value)*] "]"\n'
               'object: "{" [pair ("," pair)*] "}"\npair: ESCAPED_STRING ":" value\n'
               "%import common.ESCAPED_STRING\n%import common.SIGNED_NUMBER\n%import common.WS\n%ignore WS\n",
    "examples": [{"text": "a cat called Tom", "code": '{"name": "Tom", "kind": "cat"}'}],
}
UBUNTU = {"22.04": "jammy", "24.04": "noble"}
REQUESTS = {
    "flow": {"dsl": "flow", "text": "when a form is submitted, post the answers to #sales"},
    "sql": {"dsl": "sql", "text": "count the orders per customer", "context": "orders(id, customer_id, total)"},
    "json": {"dsl": "json", "text": "a dog called Rex, 3 years old"},
}


def say(message: str) -> None:
    print(f"[image-check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(*command: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=check, text=True, capture_output=True, **kwargs)


# ------------------------------------------------------------------------------------------------- 1. base


def python_base(dockerfile: Path) -> tuple[str, str]:
    """The Debian release and Python version of the Dockerfile's default ``PYTHON_IMAGE`` (python:X.Y-slim-R)."""
    found = re.search(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)-slim-(\w+)\s*$", dockerfile.read_text(), re.M)
    if not found:
        raise SystemExit("Dockerfile: ARG PYTHON_IMAGE=python:<X.Y>-slim-<debian release> not found")
    return found.group(2), found.group(1)


def cuda_base(dockerfile: Path) -> str:
    """The Ubuntu release of the Dockerfile's default ``CUDA_IMAGE`` (nvidia/cuda:<version>-runtime-ubuntuYY.MM)."""
    found = re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-ubuntu(\d+\.\d+)\s*$", dockerfile.read_text(), re.M)
    if not found or found.group(1) not in UBUNTU:
        raise SystemExit(f"Dockerfile: ARG CUDA_IMAGE=nvidia/cuda:<version>-ubuntu<one of {sorted(UBUNTU)}> not found")
    return UBUNTU[found.group(1)]


def ensure_base(tag: str, release: str, mirror: str, *, include: tuple[str, ...] = (), keyring: Path | None = None,
                check: Callable[[Path], None] | None = None) -> str:
    """A debootstrapped image of ``release`` (minbase + ``include``), apt lists removed, made once."""
    if run("podman", "image", "exists", tag, check=False).returncode == 0:
        say(f"base image {tag} already here")
        return tag
    with tempfile.TemporaryDirectory(prefix="nl2dsl-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        say(f"debootstrap {release} from {mirror} (about a minute) ...")
        options = ["--variant=minbase"] + ([f"--include={','.join(include)}"] if include else [])
        options += [f"--keyring={keyring}"] if keyring else []
        # Debian's debootstrap knows Ubuntu releases up to its own; every Ubuntu release uses the "gutsy" script.
        script = [] if (Path("/usr/share/debootstrap/scripts") / release).exists() else [
            "/usr/share/debootstrap/scripts/gutsy"]
        subprocess.run(["debootstrap", *options, release, str(rootfs), mirror, *script], check=True,
                       stdout=subprocess.DEVNULL)
        if check:
            check(rootfs)
        for leftovers in ("var/lib/apt/lists", "var/cache/apt"):
            shutil.rmtree(rootfs / leftovers)
            (rootfs / leftovers).mkdir()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["podman", "import", "--change", "ENV=LANG=C.UTF-8", "-", tag], stdin=tar.stdout,
                       check=True, stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise SystemExit("tar of the debootstrapped tree failed")
    say(f"base image {tag} made")
    return tag


def python_stand_in(mirror: str) -> str:
    """For python:X.Y-slim-<release>: Debian's own Python of that release, which must be X.Y."""
    release, python = python_base(ROOT / "Dockerfile")

    def same_python(rootfs: Path) -> None:
        found = run("chroot", str(rootfs), "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])")
        if found.stdout.strip() != python:
            raise SystemExit(f"Debian {release} has Python {found.stdout.strip()}, the Dockerfile's base {python}")

    return ensure_base(f"localhost/nl2dsl-base:python{python}-{release}", release, mirror,
                       include=("python3", "python3-venv", "python-is-python3", "ca-certificates"), check=same_python)


def cuda_stand_in(mirror: str) -> str:
    """For nvidia/cuda:<version>-runtime-ubuntu<release>: that Ubuntu release, without CUDA's libraries (torch's
    wheels carry the ones it loads). Ubuntu's keyring comes from the release's own index, over HTTPS."""
    release = cuda_base(ROOT / "Dockerfile")
    tag = f"localhost/nl2dsl-base:ubuntu-{release}"
    if run("podman", "image", "exists", tag, check=False).returncode == 0:
        return ensure_base(tag, release, mirror)
    with tempfile.TemporaryDirectory(prefix="nl2dsl-keyring-") as tmp:
        index = httpx.get(f"{mirror.replace('http:', 'https:')}/dists/{release}/main/binary-amd64/Packages.gz",
                          timeout=60).raise_for_status()
        stanza = re.search(r"^Package: ubuntu-keyring\n.*?\n\n", gzip.decompress(index.content).decode(), re.M | re.S)
        filename = re.search(r"^Filename: (\S+)$", stanza.group(0), re.M).group(1)
        sha256 = re.search(r"^SHA256: (\S+)$", stanza.group(0), re.M).group(1)
        deb = httpx.get(f"{mirror.replace('http:', 'https:')}/{filename}", timeout=60).raise_for_status().content
        if hashlib.sha256(deb).hexdigest() != sha256:
            raise SystemExit(f"{filename}: SHA256 differs from the release's index")
        (Path(tmp) / "keyring.deb").write_bytes(deb)
        run("dpkg-deb", "-x", str(Path(tmp) / "keyring.deb"), tmp)

        def ubuntu_sources(rootfs: Path) -> None:  # as in Ubuntu's own images: every pocket and component
            (rootfs / "etc/apt/sources.list").write_text("".join(
                f"deb {mirror} {release}{pocket} main restricted universe multiverse\n"
                for pocket in ("", "-updates", "-backports", "-security")))

        return ensure_base(tag, release, mirror, keyring=Path(tmp) / "usr/share/keyrings/ubuntu-archive-keyring.gpg",
                           check=ubuntu_sources)


# ------------------------------------------------------------------------------------------------ 2. build

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


# ------------------------------------------------------------------------------------------------- 3. lean

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
    base = ["podman", "run", "--runtime", RUNTIME, "--rm", *host_ulimits(), "--user", "0", "--entrypoint"]
    found = json.loads(run(*base, "python", tag, "-c", _INSPECT, ",".join(dev_packages())).stdout)
    largest = run(*base, "sh", tag, "-c",
                  "du -sm /opt/venv/lib/python3*/site-packages/* /opt/nl2dsl | sort -n | tail -8").stdout
    found["size_mb"] = round(size / 1e6)
    found["largest_mb"] = {Path(p).name: int(mb) for mb, p in (line.split() for line in largest.splitlines())}
    return found


# -------------------------------------------------------------------------------------------------- 4. run


def render_chart(values: dict) -> list[dict]:
    """The chart with the cpu profile and ``values`` on top, as Kubernetes objects."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as extra:
        yaml.safe_dump(values, extra)
        extra.flush()
        out = run(str(HELM), "template", "nl2dsl", str(CHART), "-f", str(PROFILE), "-f", extra.name).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _quantity_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def _write_items(folder: Path, data: dict[str, str], items: list[dict] | None) -> None:
    """A Secret or ConfigMap volume's files: every key, or only ``items`` (key -> path), readable by all."""
    folder.mkdir(parents=True, mode=0o755)
    for item in items or [{"key": key, "path": key} for key in data]:
        path = folder / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        path.write_text(data[item["key"]])
        path.chmod(0o644)


def podman_run_args(objects: list[dict], files: Path, ports: dict[int, int], cpus: int) -> list[str]:
    """``podman run`` options for the chart's Deployment's first container, as a kubelet would run it.

    ``files`` (on a tmpfs: /dev/shm) receives the emptyDirs and the Secret and ConfigMap volumes' files;
    ``ports`` maps container ports to the host's loopback; ``cpus`` caps the CPU limit at what this machine has.
    Anything of the pod this translation does not know (a volume type, ``valueFrom``, ``subPath``) is an error,
    never silently dropped.
    """
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    pod_security, security = pod.get("securityContext", {}), container.get("securityContext", {})
    args: list[str] = []

    user, group = pod_security.get("runAsUser"), pod_security.get("runAsGroup", pod_security.get("runAsUser"))
    if pod_security.get("runAsNonRoot") and not user:
        raise ValueError("runAsNonRoot without a non-zero runAsUser")
    if user is not None:
        args += ["--user", f"{user}:{group}"]
    if "fsGroup" in pod_security:
        args += ["--group-add", str(pod_security["fsGroup"])]
    if security.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]  # podman would add writable /tmp, /run: Kubernetes does not
    if security.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    for cap in security.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    for cap in security.get("capabilities", {}).get("add", []):
        args += ["--cap-add", cap]

    for var in container.get("env", []):
        if "value" not in var:
            raise ValueError(f"env {var['name']}: only plain values are translated")
        args += ["--env", f"{var['name']}={var['value']}"]
    if container.get("envFrom"):
        raise ValueError("envFrom is not translated")

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if "subPath" in mount:
            raise ValueError(f"volume {mount['name']}: subPath is not translated")
        volume, path = volumes[mount["name"]], mount["mountPath"]
        if "emptyDir" in volume:
            if path == "/dev/shm":
                args += ["--shm-size", str(_quantity_bytes((volume["emptyDir"] or {}).get("sizeLimit", "64Mi")))]
                continue
            # An empty folder as the kubelet makes one: mode 0777, and with an fsGroup, that group and setgid.
            # (podman's own tmpfs takes the mode and owner of the image's folder instead: /home/nl2dsl, 0755 root.)
            empty = files / mount["name"]
            empty.mkdir()
            group = pod_security.get("fsGroup")
            empty.chmod(0o777 if group is None else 0o2777)
            if group is not None and os.geteuid() == 0:
                os.chown(empty, 0, group)
            args += ["--volume", f"{empty}:{path}"]
        elif "secret" in volume:
            secret = by_name[("Secret", volume["secret"]["secretName"])]
            _write_items(files / mount["name"], secret.get("stringData", {}), volume["secret"].get("items"))
            args += ["--volume", f"{files / mount['name']}:{path}:ro"]
        elif "configMap" in volume:
            config_map = by_name[("ConfigMap", volume["configMap"]["name"])]
            _write_items(files / mount["name"], config_map.get("data", {}), volume["configMap"].get("items"))
            args += ["--volume", f"{files / mount['name']}:{path}:ro"]
        else:
            raise ValueError(f"volume {mount['name']}: {sorted(set(volume) - {'name'})} is not translated")

    limits = container.get("resources", {}).get("limits", {})
    if "cpu" in limits:
        args += ["--cpus", str(min(float(limits["cpu"]), cpus))]
    if "memory" in limits:
        args += ["--memory", str(_quantity_bytes(limits["memory"]))]
    for port in container.get("ports", []):
        args += ["--publish", f"127.0.0.1:{ports[port['containerPort']]}:{port['containerPort']}"]
    return args


def host_ulimits() -> list[str]:
    """podman's default open-files and process limits, lowered to this machine's hard limits where they are
    lower (raising a hard limit is refused in some sandboxes, this one among them)."""
    limits = []
    for name, which, default in (("nofile", resource.RLIMIT_NOFILE, 1048576), ("nproc", resource.RLIMIT_NPROC, 32768)):
        hard = resource.getrlimit(which)[1]
        value = default if hard == resource.RLIM_INFINITY else min(default, hard)
        limits += ["--ulimit", f"{name}={value}:{value}"]
    return limits


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------------- 5-7. ready, use, drain


def wait_ready(url: str, name: str, timeout_s: float) -> float:
    """Seconds until /readyz answers 200; fails early if the container stops."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        if run("podman", "inspect", "--format", "{{.State.Running}}", name).stdout.strip() != "true":
            raise SystemExit(f"the container stopped before it was ready: see {REPORTS / 'container.log'}")
        time.sleep(0.5)
    raise SystemExit(f"not ready after {timeout_s:.0f} s (the chart's startup probe budget)")


def parses(dsl: str, code: str) -> bool:
    """Whether ``code`` parses with the DSL's grammar, here (the service's own verdict is not trusted)."""
    import lark

    from service.grammars import load_grammar_file

    if dsl == JSON_DSL["name"]:
        parser = lark.Lark(JSON_DSL["grammar"], parser="earley")
        try:
            parser.parse(code)
            return True
        except lark.LarkError:
            return False
    return load_grammar_file(ROOT / "grammars" / f"{dsl}.lark").parse(code).valid


def publish(url: str, key: str) -> dict:
    """The tenant publishes :data:`JSON_DSL` (written to the store under $HOME)."""
    response = httpx.post(f"{url}/dsls", json=JSON_DSL, timeout=60, headers={"Authorization": f"Bearer {key}"})
    return {"status": response.status_code, "version": response.json().get("version")}


def generate(url: str, key: str, dsl: str) -> dict:
    """One request, and whether its code parses."""
    response = httpx.post(f"{url}/generate", json=REQUESTS[dsl], timeout=120,
                          headers={"Authorization": f"Bearer {key}"})
    body = response.json()
    code = body.get("code") or ""
    parsed = parses(dsl, code) if code else False
    return {"status": response.status_code, "code": code, "valid": body.get("valid"), "parses_here": parsed,
            "adapter": body.get("adapter")}


def _in_flight(metrics_url: str) -> float:
    text = httpx.get(f"{metrics_url}/metrics", timeout=2).text
    found = re.search(r"^nl2dsl_requests_in_flight (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def drain(url: str, metrics_url: str, key: str, name: str, concurrent: int, grace_s: float) -> dict:
    """SIGTERM while ``concurrent`` generations run: each must finish, a new connection must be refused, and
    the process must exit 0 within the pod's grace period."""
    results: list[dict] = []
    dsls = [("flow", "sql")[i % 2] for i in range(concurrent)]
    threads = [threading.Thread(target=lambda d=d: results.append(generate(url, key, d))) for d in dsls]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while (in_flight := _in_flight(metrics_url)) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    signalled = time.monotonic()
    run("podman", "kill", "--signal", "TERM", name)
    time.sleep(0.5)
    try:
        httpx.get(f"{url}/healthz", timeout=5)
        refused = False
    except httpx.TransportError:
        refused = True
    exit_code = int(run("podman", "wait", name, timeout=grace_s + 30).stdout.strip())
    exited_s = time.monotonic() - signalled
    for thread in threads:
        thread.join(timeout=60)
    return {"in_flight_at_sigterm": in_flight, "finished": sum(r["status"] == 200 and r["parses_here"]
                                                               for r in results),
            "sent": concurrent, "new_connection_refused": refused, "exit_code": exit_code,
            "sigterm_to_exit_s": round(exited_s, 1)}


# --------------------------------------------------------------------------------------------------- main


def check(results: dict) -> list[str]:
    """What failed, in words (empty: everything passed)."""
    lean, failures = results["lean"], []
    if lean["compilers"] or lean["test_packages"] or lean["pip_caches"]:
        failures.append(f"not lean: {lean}")
    if results["publish"]["status"] != 201:
        failures.append(f"publishing a DSL: {results['publish']}")
    if results["healthcheck"] != 0:
        failures.append("the image's HEALTHCHECK failed")
    for dsl, result in results["generate"].items():
        if result["status"] != 200 or not result["parses_here"]:
            failures.append(f"generate {dsl}: {result}")
    d = results["drain"]
    if d["in_flight_at_sigterm"] < 1 or d["finished"] != d["sent"] or not d["new_connection_refused"] \
            or d["exit_code"] != 0:
        failures.append(f"drain: {d}")
    if results["container_log_tracebacks"]:
        failures.append("the container's log has a traceback")
    return failures


_GPU_SMOKE = """
import json, torch, vllm
from service.app import create_app
from service.config import Settings
create_app(Settings(auth="off"))
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "vllm": vllm.__version__,
                  "gpus": torch.cuda.device_count()}))
"""


def _copy_embedded_model(cpu_tag: str, into: Path) -> str:
    """Copy the converted embedded model out of the cpu image (built first) into ``into``; its folder name."""
    if run("podman", "image", "exists", cpu_tag, check=False).returncode != 0:
        raise SystemExit(f"{cpu_tag} is missing: the gpu check borrows its model, run `make image-check` first")
    container = run("podman", "create", cpu_tag).stdout.strip()
    try:
        run("podman", "cp", f"{container}:/opt/nl2dsl/models/.", str(into))
    finally:
        run("podman", "rm", container, check=False)
    (folder,) = [p for p in into.iterdir() if p.is_dir()]
    into.chmod(0o755)
    return folder.name


def _probes_after_failure(url: str, timeout_s: float) -> dict:
    """What the probes say once the engine has failed: /healthz 503 (the kubelet restarts the pod), /readyz why."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{url}/healthz", timeout=5)
            if health.status_code == 503:
                ready = httpx.get(f"{url}/readyz", timeout=5)
                return {"healthz": 503, "readyz": ready.status_code,
                        "reason": ready.json().get("error", {}).get("message")}
        except httpx.TransportError:
            pass
        time.sleep(1)
    return {"healthz": "still 200 or no answer", "after_s": timeout_s}


def check_gpu(tag: str, results: dict) -> list[str]:
    """The gpu flavour without a GPU: what it installed, that the service imports and builds its app as the chart's
    user with a read-only root, and that ``nl2dsl serve`` without a GPU fails its liveness probe with the reason."""
    user = ["--user", "10001:10001", "--read-only", "--read-only-tmpfs=false", "--cap-drop", "ALL"]
    base = ["podman", "run", "--runtime", RUNTIME, "--rm", *host_ulimits(), *user, "--tmpfs", "/tmp"]
    smoke = run(*base, "--entrypoint", "python", tag, "-c", _GPU_SMOKE, check=False)
    results["imports"] = json.loads(smoke.stdout.splitlines()[-1]) if smoke.returncode == 0 else smoke.stderr[-2000:]
    say(f"imports as uid 10001, read-only root: {results['imports']}")
    with tempfile.TemporaryDirectory(prefix="nl2dsl-model-") as models:
        # The model as the chart mounts one (read-only, NL2DSL_MODEL): the cpu image's converted SmolLM2.
        model = _copy_embedded_model(tag.rsplit("-", 1)[0] + "-cpu", Path(models))
        name, port = f"nl2dsl-image-check-gpu-{os.getpid()}", free_port()
        run("podman", "run", "--runtime", RUNTIME, "--detach", "--name", name, *host_ulimits(), *user,
            "--tmpfs", "/tmp", "--env", "HOME=/tmp", "--volume", f"{models}:/models:ro",
            "--env", f"NL2DSL_MODEL=/models/{model}", "--publish", f"127.0.0.1:{port}:8000", tag, "--port", "8000")
        try:
            results["serve_without_gpu"] = _probes_after_failure(f"http://127.0.0.1:{port}", timeout_s=300)
        finally:
            (REPORTS / "container-gpu.log").write_text(run("podman", "logs", name, check=False).stdout)
            run("podman", "rm", "--force", name, check=False)
    say(f"nl2dsl serve without a GPU: {results['serve_without_gpu']}")
    failures = [] if smoke.returncode == 0 else [f"the service does not import: {results['imports']}"]
    if results["serve_without_gpu"].get("healthz") != 503:
        failures.append(f"no GPU, yet the liveness probe does not fail: {results['serve_without_gpu']}")
    if results["lean"]["test_packages"] or results["lean"]["pip_caches"]:
        failures.append(f"not lean: {results['lean']}")
    return failures


def check_cpu(tag: str, results: dict, keep: bool) -> list[str]:
    """The cpu flavour run as the chart's cpu profile: ready, used, drained."""
    key = secrets.token_urlsafe(24)
    keys = [{"sha256": hashlib.sha256(key.encode()).hexdigest(), "tenant": TENANT}]
    repository, _, image_tag = tag.rpartition(":")
    objects = render_chart({"image": {"repository": repository, "tag": image_tag}, "apiKeys": {"keys": keys}})
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    probe = pod["containers"][0]["startupProbe"]
    grace_s = float(pod.get("terminationGracePeriodSeconds", 30))
    ports = {p["containerPort"]: free_port() for p in pod["containers"][0]["ports"]}
    name = f"nl2dsl-image-check-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="nl2dsl-pod-", dir="/dev/shm") as files:
        os.chmod(files, 0o755)
        options = podman_run_args(objects, Path(files), ports, os.cpu_count() or 1)
        container_args = pod["containers"][0].get("args", [])
        say(f"podman run as the chart's cpu profile: {' '.join(options)}")
        started = time.monotonic()
        run("podman", "run", "--runtime", RUNTIME, "--detach", "--name", name, *host_ulimits(), *options, tag,
            *container_args)
        logs = subprocess.Popen(["podman", "logs", "--follow", name], stdout=(REPORTS / "container.log").open("w"),
                                stderr=subprocess.STDOUT)
        try:
            url, metrics_url = f"http://127.0.0.1:{ports[8000]}", f"http://127.0.0.1:{ports[9090]}"
            wait_ready(url, name, probe["periodSeconds"] * probe["failureThreshold"])
            results["start_to_ready_s"] = round(time.monotonic() - started, 1)
            say(f"ready {results['start_to_ready_s']} s after podman run")
            results["healthcheck"] = run("podman", "healthcheck", "run", name, check=False).returncode
            results["publish"] = publish(url, key)
            say(f"published the tenant's DSL {JSON_DSL['name']!r}: {results['publish']}")
            results["generate"] = {dsl: generate(url, key, dsl) for dsl in REQUESTS}
            for dsl, result in results["generate"].items():
                say(f"generate {dsl}: {result['status']}, parses here: {result['parses_here']}: {result['code']!r}")
            results["drain"] = drain(url, metrics_url, key, name, concurrent=4, grace_s=grace_s)
            say(f"drain: {results['drain']}")
        finally:
            run("podman", "stop", "--time", "5", name, check=False)
            logs.wait(timeout=30)
            if not keep:
                run("podman", "rm", "--force", name, check=False)
    results["container_log_tracebacks"] = (REPORTS / "container.log").read_text().count("Traceback")
    return check(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavor", choices=("cpu", "gpu"), default="cpu",
                        help="gpu: built on a stand-in for the CUDA image and checked as far as no GPU allows")
    parser.add_argument("--tag", default=None, help="default: localhost/nl2dsl:<version>-<flavor>")
    parser.add_argument("--mirror", default=None, help="for debootstrap (default: Debian's or Ubuntu's archive)")
    parser.add_argument("--skip-build", action="store_true", help="check an image built before")
    parser.add_argument("--keep", action="store_true", help="leave the stopped container for inspection")
    args = parser.parse_args(argv)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    tag = args.tag or f"localhost/nl2dsl:{version}-{args.flavor}"
    REPORTS.mkdir(parents=True, exist_ok=True)
    results: dict = {"image": tag}

    if args.flavor == "cpu":
        results["base"] = python_stand_in(args.mirror or "http://deb.debian.org/debian")
        base_arg = f"PYTHON_IMAGE={results['base']}"
    else:
        results["base"] = cuda_stand_in(args.mirror or "http://archive.ubuntu.com/ubuntu")
        base_arg = f"CUDA_IMAGE={results['base']}"
    if not args.skip_build:
        results["build_s"] = round(build(tag, args.flavor, base_arg, REPORTS / f"build-{args.flavor}.log"))
        say(f"built {tag} in {results['build_s']} s")
    results["lean"] = lean = inspect_image(tag)
    say(f"image: {lean['size_mb']} MB; compilers {lean['compilers'] or 'none'}, test packages "
        f"{lean['test_packages'] or 'none'}, pip caches {lean['pip_caches'] or 'none'}")

    failures = check_cpu(tag, results, args.keep) if args.flavor == "cpu" else check_gpu(tag, results)
    (REPORTS / f"result-{args.flavor}.json").write_text(json.dumps(results, indent=2) + "\n")
    for failure in failures:
        say("FAILED: " + failure)
    say("passed" if not failures else f"{len(failures)} check(s) failed; {REPORTS / f'result-{args.flavor}.json'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
