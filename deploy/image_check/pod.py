"""The chart's pod as ``podman run`` options: what a kubelet would give the container, on this machine."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

from deploy.image_check.process import ROOT, run

HELM = ROOT / ".tools" / "bin" / "helm"
CHART = ROOT / "deploy" / "helm" / "nl2dsl"
PROFILE = ROOT / "deploy" / "helm" / "profiles" / "cpu.yaml"


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
