"""`make image-check` runs the image as the chart's cpu profile would: the translation from the rendered pod to
`podman run` keeps every restriction of the pod, and the build gets this machine's pip configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from deploy.image_check.build import pip_build_config
from deploy.image_check.pod import podman_run_args
from service.config import PROJECT_ROOT
from tests.unit.test_chart import _render


def _option(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == name]


def test_the_cpu_pod_becomes_a_podman_run_as_strict_as_the_pod(tmp_path):
    docs = _render("cpu", sets=("apiKeys.keys[0].sha256=" + "a" * 64, "apiKeys.keys[0].tenant=contoso"))
    args = podman_run_args(docs, tmp_path, {8000: 18000, 9090: 19090}, cpus=2)

    assert _option(args, "--user") == ["10001:10001"]
    assert {"--read-only", "--read-only-tmpfs=false"} <= set(args)  # only the emptyDirs are writable
    assert _option(args, "--cap-drop") == ["ALL"] and _option(args, "--security-opt") == ["no-new-privileges"]
    assert _option(args, "--shm-size") == [str(2**30)] and _option(args, "--memory") == [str(8 * 2**30)]
    assert _option(args, "--cpus") == ["2"]  # the pod's limit is 4: capped at what the machine has
    assert _option(args, "--publish") == ["127.0.0.1:18000:8000", "127.0.0.1:19090:9090"]
    env = dict(e.split("=", 1) for e in _option(args, "--env"))
    assert env["NL2DSL_API_KEYS_FILE"] == "/etc/nl2dsl/secrets/api-keys.yaml"
    # The Secret and the ConfigMap become read-only folders holding what the pod would see.
    volumes = {inside: (host, rest) for host, inside, *rest in (v.split(":") for v in _option(args, "--volume"))}
    # The emptyDirs: empty, writable by the pod's user (its fsGroup, as the kubelet does), nothing else is.
    writable = {inside for inside, (_, rest) in volumes.items() if not rest}
    assert writable == {"/tmp", "/home/nl2dsl"}
    for inside in writable:
        folder = Path(volumes[inside][0])
        assert not list(folder.iterdir()) and folder.stat().st_mode & 0o7777 == 0o2777
        assert folder.stat().st_gid == 10001 or os.geteuid() != 0
    keys = yaml.safe_load((Path(volumes["/etc/nl2dsl/secrets"][0]) / "api-keys.yaml").read_text())
    assert keys["keys"][0]["tenant"] == "contoso"
    grammars = Path(volumes["/etc/nl2dsl/grammars"][0])
    assert (grammars / "tenants" / "contoso.yaml").read_text() == (
        PROJECT_ROOT / "grammars" / "tenants" / "contoso.yaml").read_text()
    assert volumes["/etc/nl2dsl/secrets"][1] == volumes["/etc/nl2dsl/grammars"][1] == ["ro"]


def test_what_the_translation_does_not_know_is_an_error_not_dropped(tmp_path):
    with pytest.raises(ValueError, match="not translated"):  # the gpu profile: store credentials, model volume
        podman_run_args(_render("gpu"), tmp_path, {8000: 1, 9090: 2}, cpus=2)


def test_the_build_gets_this_machines_pip_configuration(tmp_path):
    index, wheels = tmp_path / "mirror" / "simple", tmp_path / "wheels"
    index.mkdir(parents=True)
    wheels.mkdir()
    cert = tmp_path / "company-ca.crt"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    out = tmp_path / "pip"
    out.mkdir()
    listing = (f"global.cert='{cert}'\nglobal.extra-index-url='file://{index} https://pypi.example.com/simple'\n"
               f":env:.find-links='{wheels}'\n:env:.default-timeout='60'\n:env:.disable-pip-version-check='1'\n")

    volumes = pip_build_config(listing, out)

    assert _option(volumes, "--volume") == [f"{out}:/etc/xdg/pip:ro", f"{index.parent}:{index.parent}:ro",
                                            f"{wheels}:{wheels}:ro"]
    conf = (out / "pip.conf").read_text()
    assert "cert = /etc/xdg/pip/company-ca.crt" in conf and (out / "company-ca.crt").read_text() == cert.read_text()
    assert f"extra-index-url = file://{index} https://pypi.example.com/simple" in conf
    assert "default-timeout = 60" in conf and "disable-pip-version-check" not in conf
    assert pip_build_config("", out) == []
