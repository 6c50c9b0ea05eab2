"""Test helpers: small random LoRA adapters made with peft, with the manifest the registry reads."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import yaml

from service.model import EMBEDDED_NAME, base_fingerprint


def write_manifest(folder: Path, *, name: str, model_dir: str, dsl: str | None, tenants: list[str], rank: int,
                   fingerprint: str | None = None) -> None:
    manifest = {
        "name": name,
        "dsl": dsl,
        "tenants": tenants,
        "rank": rank,
        "base_model": {"id": EMBEDDED_NAME, "fingerprint": fingerprint or base_fingerprint(model_dir)},
    }
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))


def make_random_adapter(model_dir: str, folder: Path, *, seed: int, rank: int = 8, scale: float = 0.05,
                        name: str | None = None, dsl: str | None = None, tenants: list[str] | None = None) -> Path:
    """A LoRA adapter with random A and B (B is zero in a fresh peft adapter, which would change nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        lora_dropout=0.0, init_lora_weights=False)
    model = get_peft_model(base, config)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "lora_" in param_name:
                param.normal_(0.0, scale)
    model.save_pretrained(folder)
    write_manifest(folder, name=name or folder.name, model_dir=model_dir, dsl=dsl, tenants=tenants or ["*"], rank=rank)
    return folder


def write_fake_adapter(root: Path, name: str, *, fingerprint: str, dsl: str | None = "flow",
                       tenants: tuple[str, ...] = ("*",), rank: int = 8, weights: bytes = b"w") -> Path:
    """An adapter folder the registry accepts for the embedded base (manifest, config, and real LoRA weights of
    layer 0's q_proj shaped for SmolLM2-135M), for tests that never load it into an engine."""
    folder = root / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 2 * rank, "peft_type": "LORA",
                                                            "target_modules": ["q_proj"]}))
    write_fake_weights(folder, weights, rank=rank)
    manifest = {"name": name, "dsl": dsl, "tenants": list(tenants), "rank": rank,
                "base_model": {"id": "test-base", "fingerprint": fingerprint}}
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return folder


#: The embedded base model's dimensions (SmolLM2-135M): what fake adapters are shaped for.
SMOLLM2 = {"layers": 30, "hidden": 576, "q": 576, "kv": 192, "intermediate": 1536}


def write_fake_weights(folder: Path, seed: bytes, *, rank: int = 8,
                       shapes: dict[str, list[int]] | None = None) -> None:
    """LoRA weights of layer 0's q_proj for the embedded base, whose values depend on ``seed`` (``shapes``
    replaces the shape of a tensor, by name, to make one that does not fit)."""
    import hashlib

    import numpy as np
    import safetensors.numpy

    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    wanted = {f"{prefix}.lora_A.weight": [rank, SMOLLM2["hidden"]], f"{prefix}.lora_B.weight": [SMOLLM2["q"], rank],
              **(shapes or {})}
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed).digest()[:8], "little"))
    tensors = {key: rng.standard_normal(shape).astype(np.float32) * 0.01 for key, shape in wanted.items()}
    (folder / "adapter_model.safetensors").write_bytes(safetensors.numpy.save(tensors))


def metric_value(exposition: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``, in Prometheus text (0 if none)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def eventually(condition, what: str, *, timeout: float = 30.0) -> None:
    """Wait until ``condition()`` (replicas follow the store by polling it)."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


def listening_process(url: str):
    """The process (psutil) listening on ``url``'s port: a server started by a fixture."""
    from urllib.parse import urlsplit

    import psutil

    port = urlsplit(str(url)).port
    [pid] = {c.pid for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"}
    return psutil.Process(pid)


def wait_in_flight(url: str, count: int, log: Path, *, timeout: float = 120.0) -> None:
    """Poll ``url``'s /metrics until ``nl2dsl_requests_in_flight`` reaches ``count``; fail with the server's log."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(f"{url}/metrics", timeout=5).text
        if metric_value(text, "nl2dsl_requests_in_flight") >= count:
            return
        assert time.monotonic() < deadline, f"never {count} requests in flight; the server's log:\n" + \
            log.read_text()[-3000:]
        time.sleep(0.1)


def assert_generation_stopped(client) -> None:
    """The service let go of every request (none in flight) and the engine generates no more tokens: what a
    client that went away should leave behind (``client``: an httpx client of the service)."""
    import time

    def metric(name: str) -> float:
        return metric_value(client.get("/metrics").text, name)

    deadline = time.monotonic() + 10
    while metric("nl2dsl_requests_in_flight") > 0:
        assert time.monotonic() < deadline, "the service still holds the request of a client that went away"
        time.sleep(0.1)
    time.sleep(1.0)  # let the engine process the abort
    tokens = metric("vllm:generation_tokens_total")
    time.sleep(3.0)  # ~20 tokens/s on this CPU: a long request would still be running
    assert metric("vllm:generation_tokens_total") - tokens < 3, "the engine kept generating"


@contextlib.contextmanager
def holding_a_slot(url: str, key: str, log: Path):
    """One request of ``key``'s tenant in flight on the service at ``url`` for the block's duration (a few
    seconds of generation): on a replica allowing one request per tenant, the tenant's next request is a 429."""
    import threading

    import httpx

    ask = {"dsl": "flow", "adapter": "base", "text": "describe every connector you know", "constrained": False,
           "max_tokens": 96, "examples": 0}
    held = threading.Thread(target=lambda: httpx.post(f"{url}/generate", json=ask, timeout=300,
                                                      headers={"Authorization": f"Bearer {key}"}))
    held.start()
    try:
        wait_in_flight(url, 1, log)
        yield
    finally:
        held.join(timeout=300)
