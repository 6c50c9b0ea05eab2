"""Hostile tenants against the real service and engine (docs/SECURITY.md 13, 13e): an adapter that does not fit
the base never reaches a slot, an adapter the engine refuses is quarantined while every other tenant is served,
and a grammar the DSL sandbox refuses never becomes an onboarding run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx

from service.adapters import pack_adapter
from tests.helpers import make_random_adapter

ALPHA = "alpha-key"
FLOW = {"dsl": "flow", "text": "post form answers to #sales", "max_tokens": 8}
#: 121 characters, 19 optional items: lark expands each into two alternatives (2^19 to compile).
COMPILE_BOMB = "start: " + " ".join(f'["{chr(97 + i)}"]' for i in range(19)) + "\n"


def _widen_first_lora_a(weights: Path) -> None:
    """Rewrite ``weights`` so layer 0's o_proj lora_A is one column wider than the base's projection (the header
    stays consistent: every offset moves with it), as the attack's archive was. o_proj, because vLLM merges q,
    k and v into one layer when it adds an adapter, and that merge alone fails on a misfit there; o_proj's
    misfit passes vLLM's own add and once failed only in the middle of copying into a slot."""
    import safetensors.torch
    import torch

    tensors = safetensors.torch.load_file(str(weights))
    key = "base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight"
    tensors[key] = torch.cat([tensors[key], torch.zeros(tensors[key].shape[0], 1)], dim=1)
    safetensors.torch.save_file(tensors, str(weights))


def test_an_adapter_one_column_too_wide_is_refused_at_publish_by_the_real_service(server, tmp_path):
    folder = make_random_adapter(server.model_dir, tmp_path / "wide", seed=11, dsl="flow")
    _widen_first_lora_a(folder / "adapter_model.safetensors")
    with server.client(ALPHA) as alpha:
        refused = alpha.post("/adapters", content=pack_adapter(folder))
        assert refused.status_code == 400, refused.text
        assert "o_proj.lora_A.weight" in refused.json()["error"]["message"]
        assert alpha.get("/adapters/wide/versions").status_code == 404  # nothing stored
        assert alpha.post("/generate", json=FLOW).status_code == 200


def test_an_adapter_the_engine_refuses_is_quarantined_and_never_takes_another_tenants_slot(server, tmp_path):
    """The service's checks are the first wall; the engine's own is behind it. Here the files of a published
    adapter change on disk after they were checked (as a check that missed, or a disk, would have it): the
    engine refuses them when they are added, before any slot is touched; the adapter's requests get 409, it is
    listed as quarantined to its owner, and the engine goes on serving everyone else."""
    folder = make_random_adapter(server.model_dir, tmp_path / "swapped", seed=12, dsl="flow")
    with server.client(ALPHA) as alpha, server.client() as admin:
        published = alpha.post("/adapters", content=pack_adapter(folder))
        assert published.status_code == 201
        try:
            _swap_and_use(server, alpha, admin, version=published.json()["version"], swap=_widen_first_lora_a)
        finally:  # alpha-corp's own flow adapter would otherwise be its default in later tests
            assert alpha.delete("/adapters/swapped").status_code == 204


def _swap_and_use(server, alpha: httpx.Client, admin: httpx.Client, *, version: int, swap, name: str = "swapped",
                  reason: str = "could not load") -> None:
    """Change the served copy's weights with ``swap`` (ones that do not fit, or poisoned), then use it and
    everyone else."""
    # The copy this replica serves: its cache folder is named by the version's key in the store.
    key = f"adapters/alpha-corp/{name}/{version:08d}.tar.gz"
    cache = Path.home() / ".cache" / "nl2dsl" / "published-adapters"
    served = cache / hashlib.sha256(key.encode()).hexdigest()[:32]
    assert (served / "adapter_model.safetensors").exists()
    # Evict it from the engine's host cache (max_cpu_loras 2 on the test server): two other adapters.
    for adapter, dsl in (("beta", "flow"), ("tiny-trained", "sql")):
        used = admin.post("/generate", json={**FLOW, "dsl": dsl, "adapter": adapter, "text": "count orders"})
        assert used.status_code == 200, used.text
    swap(served / "adapter_model.safetensors")

    refused = alpha.post("/generate", json={**FLOW, "adapter": name})
    assert refused.status_code == 409, refused.text
    listed = next(a for a in alpha.get("/adapters").json() if a["name"] == name)
    assert listed["available"] is False and reason in listed["error"]
    assert alpha.post("/generate", json={**FLOW, "adapter": name}).status_code == 409  # not retried
    # Every other tenant, and alpha without that adapter, are served by the same engine.
    for client, body in ((admin, {**FLOW, "adapter": "beta"}), (alpha, {**FLOW, "adapter": "alpha"}),
                         (alpha, {**FLOW, "adapter": "base"})):
        served_ok = client.post("/generate", json=body)
        assert served_ok.status_code == 200, served_ok.text
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200


def test_a_grammar_the_dsl_sandbox_refuses_never_starts_an_onboarding_run(server):
    pairs = json.dumps({"text": "a", "code": "a"}) + "\n"
    with server.client(ALPHA, timeout=300) as alpha:
        published = alpha.post("/dsls", json={"name": "bomb", "grammar": COMPILE_BOMB})
        onboarding = alpha.post("/onboarding", json={"name": "bomb", "grammar": COMPILE_BOMB, "pairs": pairs,
                                                     "budget_s": 60})
    for refused in (published, onboarding):
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["detail"]["limit"] == "compile_time"


