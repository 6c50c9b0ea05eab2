"""Multi-LoRA on the real engine: adapters are really applied, per request, and never leak into base requests."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from service.config import Settings
from service.grammars import GrammarRegistry
from service.prompts import build_prompt

GRAMMARS = GrammarRegistry(Settings().grammars_dir).load()
TEXT = "when a file is added to /reports, email the finance team"


def _free(client, adapter: str, *, max_tokens: int = 16, text: str = TEXT) -> dict:
    """Greedy, unconstrained, no retrieved examples: the plain prompt a reference model can rebuild."""
    r = client.post("/generate", json={"dsl": "flow", "text": text, "adapter": adapter, "examples": 0,
                                       "constrained": False, "max_tokens": max_tokens, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()


def test_adapters_are_listed_with_the_refused_one_and_its_reason(client):
    adapters = {a["name"]: a for a in client.get("/adapters").json()}
    assert adapters["alpha"]["available"] and adapters["beta"]["available"]
    assert adapters["alpha"]["tenants"] == ["alpha-corp"]
    assert not adapters["other-base"]["available"] and "feedfacefeedface" in adapters["other-base"]["error"]


def test_tenant_selects_its_adapter(client):
    r = client.post("/generate", json={"dsl": "flow", "text": TEXT, "tenant": "alpha-corp", "max_tokens": 8})
    assert r.json()["adapter"] == "alpha"
    r = client.post("/generate", json={"dsl": "flow", "text": TEXT, "tenant": "someone-else", "max_tokens": 8})
    assert r.json()["adapter"] == "beta"  # the shared flow adapter


def test_two_adapters_and_the_base_give_three_different_outputs(client):
    outputs = {name: _free(client, name)["code"] for name in ("base", "alpha", "beta")}
    assert len(set(outputs.values())) == 3, outputs


@pytest.mark.parametrize("adapter", ["alpha", "beta"])
def test_adapter_output_matches_peft_and_transformers(server, client, adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokens = 10
    served = _free(client, adapter, max_tokens=tokens)
    tokenizer = AutoTokenizer.from_pretrained(server.model_dir)
    prompt = build_prompt(tokenizer, GRAMMARS.get("flow"), TEXT)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert served["usage"]["prompt_tokens"] == ids.shape[1]  # the same prompt as the service built
    base = AutoModelForCausalLM.from_pretrained(server.model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(server.adapters_dir / adapter)).eval()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=tokens, do_sample=False)
    reference = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert served["code"] == reference


def test_base_request_batched_with_adapter_requests_is_not_changed_by_them(client):
    """The CPU LoRA bug (docs/PLATFORM.md): a base request batched with adapter requests got the last slot's adapter."""
    alone = _free(client, "base")["code"]
    with ThreadPoolExecutor(max_workers=6) as pool:
        for _ in range(2):
            futures = {name: pool.submit(_free, client, name) for name in ("alpha", "base", "beta")}
            futures.update({f"{name}-2": pool.submit(_free, client, name) for name in ("beta", "base", "alpha")})
            results = {name: f.result()["code"] for name, f in futures.items()}
            assert results["base"] == alone and results["base-2"] == alone, results
            # the adapters do change this output, so a leak into the base request would show
            assert results["alpha"] != alone and results["beta"] != alone


def test_a_tiny_training_run_lowers_the_loss_and_the_service_serves_its_adapter(server, client):
    import json

    import yaml

    log = json.loads((server.adapters_dir / "tiny-trained" / "training_log.json").read_text())
    assert log["last_loss"] < log["first_loss"]
    manifest = yaml.safe_load((server.adapters_dir / "tiny-trained" / "manifest.yaml").read_text())
    assert manifest["dsl"] == "sql" and manifest["training"]["steps"] == 6
    r = client.post("/generate", json={"dsl": "sql", "tenant": "tiny-corp", "text": "how many orders are there",
                                       "context": "orders(id, total)", "max_tokens": 40})
    body = r.json()
    assert r.status_code == 200 and body["adapter"] == "tiny-trained"
    assert body["finish_reason"] != "stop" or body["valid"]
