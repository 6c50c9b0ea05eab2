"""``python -m deploy.image_check``: build the cpu image and run it as the Helm chart would (docs/DEPLOY.md).

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
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from deploy.image_check.build import build, inspect_image
from deploy.image_check.pod import podman_run_args, render_chart
from deploy.image_check.process import REPORTS, ROOT, podman_run, run, say
from deploy.image_check.stand_ins import cuda_stand_in, python_stand_in
from deploy.image_check.use import JSON_DSL, REQUESTS, drain, generate, probes_after_failure, publish, wait_ready
from service.local_server import free_port
from service.security import hash_key

TENANT = "image-check"


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


def check_gpu(tag: str, results: dict) -> list[str]:
    """The gpu flavour without a GPU: what it installed, that the service imports and builds its app as the chart's
    user with a read-only root, and that ``nl2dsl serve`` without a GPU fails its liveness probe with the reason."""
    user = ["--user", "10001:10001", "--read-only", "--read-only-tmpfs=false", "--cap-drop", "ALL"]
    smoke = run(*podman_run("--rm", *user, "--tmpfs", "/tmp", "--entrypoint", "python"), tag, "-c", _GPU_SMOKE,
                check=False)
    results["imports"] = json.loads(smoke.stdout.splitlines()[-1]) if smoke.returncode == 0 else smoke.stderr[-2000:]
    say(f"imports as uid 10001, read-only root: {results['imports']}")
    with tempfile.TemporaryDirectory(prefix="nl2dsl-model-") as models:
        # The model as the chart mounts one (read-only, NL2DSL_MODEL): the cpu image's converted SmolLM2.
        model = _copy_embedded_model(tag.rsplit("-", 1)[0] + "-cpu", Path(models))
        name, port = f"nl2dsl-image-check-gpu-{os.getpid()}", free_port()
        run(*podman_run("--detach", "--name", name, *user, "--tmpfs", "/tmp", "--env", "HOME=/tmp",
                        "--volume", f"{models}:/models:ro", "--env", f"NL2DSL_MODEL=/models/{model}",
                        "--publish", f"127.0.0.1:{port}:8000"), tag, "--port", "8000")
        try:
            results["serve_without_gpu"] = probes_after_failure(f"http://127.0.0.1:{port}", timeout_s=300)
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
    keys = [{"sha256": hash_key(key), "tenant": TENANT}]
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
        run(*podman_run("--detach", "--name", name, *options), tag, *container_args)
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
