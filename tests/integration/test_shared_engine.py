"""Tenants share the real engine, not its state (issue 42; docs/SECURITY.md, 14-15).

The prefix cache was one for every tenant: a replayed guess of another tenant's private context was served
from the cache (time to first token 0.09 s when the guess was right, 0.93 s when wrong). Each tenant's requests
now carry its own cache salt. The oracle is read here from what vLLM reports, the prompt tokens served from the
cache (``usage.cached_tokens``), rather than from timings, which the shared machine makes noisy.
"""

from __future__ import annotations

import numpy as np
import safetensors.numpy

from service.adapters import pack_adapter
from tests.helpers import make_random_adapter
from tests.integration.test_hostile_tenants import ALPHA, _swap_and_use

#: A tenant's private context, about 1.3 kB as in the attack: a schema nobody else should learn.
SECRET = "; ".join(f"table acct_{i}(id int, owner text, balance_{i} numeric, iban_{i} text)" for i in range(20))
ASK = {"dsl": "flow", "text": "post form answers to #sales", "max_tokens": 1, "examples": 0, "constrained": False}


def _cached(client, context: str) -> tuple[int, int]:
    r = client.post("/generate", json={**ASK, "context": context})
    assert r.status_code == 200, r.text
    return r.json()["usage"]["cached_tokens"], r.json()["usage"]["prompt_tokens"]


def test_a_guess_of_another_tenants_context_is_served_as_a_wrong_guess_is(server):
    with server.client("alpha-key") as alpha, server.client("beta-key") as beta:
        _cached(alpha, SECRET)
        again, prompt = _cached(alpha, SECRET)
        # vLLM caches whole blocks (128 tokens on the CPU): all but the last, partly filled one
        assert again > prompt // 2, "the tenant's own repeated prompt must come from its cache"
        _cached(beta, "X" + SECRET[1:])  # beta's own blocks up to where the context starts
        wrong, _ = _cached(beta, "Y" + SECRET[1:])
        right, _ = _cached(beta, SECRET)
    assert right == wrong < prompt - 200, (right, wrong, prompt)  # before: right = the whole prompt


def test_an_adapter_with_nan_weights_is_refused_by_the_real_service_and_others_are_served(server, tmp_path):
    folder = make_random_adapter(server.model_dir, tmp_path / "nan", seed=12, dsl="flow")
    weights = folder / "adapter_model.safetensors"
    tensors = safetensors.numpy.load(weights.read_bytes())
    key = sorted(tensors)[0]
    tensors[key] = np.full_like(tensors[key], np.nan)
    weights.write_bytes(safetensors.numpy.save(tensors))
    with server.client("corrupt-key") as attacker, server.client("beta-key") as other:
        before = other.post("/generate", json={**ASK, "max_tokens": 12})
        refused = attacker.post("/adapters", content=pack_adapter(folder))
        assert refused.status_code == 400 and "NaN" in refused.json()["error"]["message"], refused.text
        after = other.post("/generate", json={**ASK, "max_tokens": 12})
    assert after.json()["code"] == before.json()["code"]


def _poison(weights) -> None:
    """One value of layer 0's o_proj lora_B made NaN (the header is unchanged)."""
    import safetensors.torch

    tensors = safetensors.torch.load_file(str(weights))
    tensors["base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight"][0, 0] = float("nan")
    safetensors.torch.save_file(tensors, str(weights))


def test_nan_weights_that_reach_the_engine_anyway_are_refused_there_and_others_are_served(server, tmp_path):
    """Behind the publish check, the engine's own: the served copy's weights turn NaN on disk after they were
    checked; the engine's guard refuses them before any slot (409, quarantined) and every other tenant is
    served by the same engine."""
    folder = make_random_adapter(server.model_dir, tmp_path / "poisoned", seed=13, dsl="flow", name="poisoned")
    with server.client(ALPHA) as alpha, server.client() as admin:
        published = alpha.post("/adapters", content=pack_adapter(folder))
        assert published.status_code == 201, published.text
        try:
            _swap_and_use(server, alpha, admin, version=published.json()["version"], swap=_poison, name="poisoned")
        finally:
            assert alpha.delete("/adapters/poisoned").status_code == 204
