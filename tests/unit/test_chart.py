"""The Helm chart as rendered by the real helm (installed by `make`): the onboarding Job calls the release's
Service without becoming one of its endpoints, and the network policy lets it in."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from service.config import PROJECT_ROOT

HELM = PROJECT_ROOT / ".tools" / "bin" / "helm"
CHART = PROJECT_ROOT / "deploy" / "helm" / "nl2dsl"
PROFILES = PROJECT_ROOT / "deploy" / "helm" / "profiles"


def _render(*profiles: str, sets: tuple[str, ...] = ()) -> list[dict]:
    assert HELM.exists(), "helm missing: `make test` / `make unit` install it into .tools/"
    command = [str(HELM), "template", "nl2dsl", str(CHART)]
    for profile in profiles:
        command += ["-f", str(PROFILES / f"{profile}.yaml")]
    for value in sets:
        command += ["--set", value]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_the_onboarding_job_calls_the_service_but_is_not_one_of_its_endpoints():
    docs = _render("gpu", "onboarding")
    (job,) = _kind(docs, "Job")
    (service,) = _kind(docs, "Service")
    (deployment,) = _kind(docs, "Deployment")
    pod = job["spec"]["template"]
    args = pod["spec"]["containers"][0]["args"]
    assert f"--url=http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}" in args
    assert {"--name=logq", "--tenant=acme", "--budget=1800"} <= set(args)
    assert not _selects(service["spec"]["selector"], pod["metadata"]["labels"])
    assert _selects(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert pod["spec"]["restartPolicy"] == "Never"
    # It trains: the serving pods' GPU, the model volume, and the same non-root, read-only settings.
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert {"data", "work", "model", "tmp"} <= mounts
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_a_restricted_network_policy_still_lets_the_onboarding_job_in():
    docs = _render("gpu", "onboarding", sets=("networkPolicy.ingressFrom[0].podSelector.matchLabels.role=backend",))
    (policy,) = _kind(docs, "NetworkPolicy")
    (job,) = _kind(docs, "Job")
    sources = policy["spec"]["ingress"][0]["from"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert any(_selects(s["podSelector"]["matchLabels"], labels) for s in sources if "podSelector" in s)
    assert any(s["podSelector"]["matchLabels"] == {"role": "backend"} for s in sources if "podSelector" in s)


def test_no_job_unless_onboarding_is_enabled_and_a_missing_name_is_an_error():
    assert not _kind(_render("cpu"), "Job")
    with pytest.raises(subprocess.CalledProcessError) as failure:
        _render("cpu", sets=("onboarding.enabled=true", "onboarding.apiKeySecret=k", "onboarding.dataConfigMap=d"))
    assert "onboarding.name is required" in failure.value.stderr


def _engine_env(docs: list[dict]) -> dict[str, str]:
    (deployment,) = _kind(docs, "Deployment")
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "nl2dsl"]
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_the_cpu_profile_binds_every_core_and_the_schema_refuses_a_malformed_binding():
    assert _engine_env(_render("cpu"))["NL2DSL_CPU_THREADS_BIND"] == "all"
    assert "NL2DSL_CPU_THREADS_BIND" not in _engine_env(_render("gpu"))  # left to the service's rule
    assert _engine_env(_render("cpu", sets=("engine.cpuThreadsBind=0-3|4-7",)))["NL2DSL_CPU_THREADS_BIND"] == "0-3|4-7"
    with pytest.raises(subprocess.CalledProcessError) as failure:
        _render("cpu", sets=("engine.cpuThreadsBind=cores 0 and 1",))
    assert "cpuThreadsBind" in failure.value.stderr


def test_the_cpu_profile_mounts_no_model_volume():
    """The embedded model is inside the cpu image: a claim for the Mistral weights would keep its pod pending."""
    (deployment,) = _kind(_render("cpu"), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert "NL2DSL_MODEL" not in _engine_env(_render("cpu"))
    (gpu,) = _kind(_render("gpu"), "Deployment")
    assert any("persistentVolumeClaim" in v for v in gpu["spec"]["template"]["spec"]["volumes"])


def test_keys_given_in_the_values_reach_the_service_as_a_keys_file_it_reads(tmp_path):
    from service.security import KeyStore, hash_key

    digest = hash_key("s3cret")
    docs = _render("cpu", sets=(f"apiKeys.keys[0].sha256={digest}", "apiKeys.keys[0].tenant=contoso",
                                "apiKeys.keys[0].dsls[0]=flow"))
    (secret,) = _kind(docs, "Secret")
    (tmp_path / "api-keys.yaml").write_text(secret["stringData"]["api-keys.yaml"])
    caller = KeyStore(tmp_path / "api-keys.yaml").authenticate({"authorization": "Bearer s3cret"})
    assert (caller.tenant, caller.may_use_dsl("flow"), caller.may_use_dsl("sql")) == ("contoso", True, False)
    with pytest.raises(subprocess.CalledProcessError) as failure:  # a key in clear text is refused
        _render("cpu", sets=("apiKeys.keys[0].sha256=s3cret", "apiKeys.keys[0].tenant=contoso"))
    assert "sha256" in failure.value.stderr


def test_the_inference_pool_option_routes_to_the_replicas_and_its_picker_reads_their_metrics():
    assert not [d for d in _render("gpu") if d["kind"] in ("InferencePool", "InferenceObjective")]  # off by default
    docs = _render("gpu", "inference-pool")
    (pool,) = _kind(docs, "InferencePool")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    serving, picker = sorted(_kind(docs, "Deployment"), key=lambda d: "epp" in d["metadata"]["name"])
    pod = serving["spec"]["template"]
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    # The pool is the serving pods, on their API port, and only them (not the picker).
    assert _selects(pool["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    assert not _selects(pool["spec"]["selector"]["matchLabels"], picker["spec"]["template"]["metadata"]["labels"])
    assert pool["spec"]["targetPorts"] == [{"number": ports["http"]}]
    # The gateway finds the picker through the pool; the picker scrapes the metrics port, which serves /metrics.
    picker_service = next(s for s in _kind(docs, "Service") if s["metadata"]["name"] == pool["spec"][
        "endpointPickerRef"]["name"])
    assert picker_service["spec"]["ports"][0]["port"] == pool["spec"]["endpointPickerRef"]["port"]["number"]
    assert _selects(picker_service["spec"]["selector"], picker["spec"]["template"]["metadata"]["labels"])
    args = picker["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--pool-name={pool['metadata']['name']}" in args
    assert f"--model-server-metrics-port={ports['metrics']}" in args
    name = picker_service["metadata"]["name"]
    (picker_config,) = [c for c in _kind(docs, "ConfigMap") if c["metadata"]["name"] == name]
    config = yaml.safe_load(picker_config["data"]["config.yaml"])
    assert "lora-affinity-scorer" in {p["type"] for p in config["plugins"]}
    # The network policy lets the picker (only it, besides Prometheus) read the metrics port.
    (policy,) = _kind(docs, "NetworkPolicy")
    metrics_from = [rule["from"] for rule in policy["spec"]["ingress"] if rule["ports"][0]["port"] == "metrics"]
    assert any(_selects(src.get("podSelector", {}).get("matchLabels", {}), picker["spec"]["template"]["metadata"]
                        ["labels"]) for rules in metrics_from for src in rules)
    # The picker may read pods, pools and objectives, nothing more.
    (role,) = [r for r in _kind(docs, "Role") if r["metadata"]["name"] == name]
    assert {v for rule in role["rules"] for v in rule["verbs"]} == {"get", "watch", "list"}
    (objective,) = _kind(docs, "InferenceObjective")
    assert objective["spec"]["poolRef"]["name"] == pool["metadata"]["name"]
