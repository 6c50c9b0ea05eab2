"""The shared-prefix batch trains exactly what the plain full-sequence batch trains: same loss, same gradients,
same teacher-forced verdicts (a tiny random Llama with a random LoRA, real peft and transformers)."""

from __future__ import annotations

import pytest

from service.grammars import Example, compile_grammar
from service.training.batching import Encoder, collate, exact_rows, loss

GRAMMAR = compile_grammar("units", 'start: /[0-9]+/ " km -> " ("mi" | "miles per hour")\n', origin="upload")
ROWS = [Example("convert 3 km to miles", "3 km -> mi"),
        Example("how fast is 120 km in miles per hour, roughly, for the dashboard", "120 km -> miles per hour"),
        Example("km 7 -> mi", "7 km -> mi", context="units(km, mi)"),
        Example("ten thousand kilometres in miles", "10000 km -> mi")]


@pytest.fixture
def lora_model(tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    # Random A and B (not peft's zero B), so every LoRA weight has a gradient to compare.
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False)
    return get_peft_model(base, config), AutoTokenizer.from_pretrained(tiny_model)


def _grads(model) -> dict:
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return grads


def test_the_shared_prefix_batch_has_the_full_batchs_loss_and_gradients(lora_model):
    import torch

    model, tokenizer = lora_model
    batch = Encoder(tokenizer, GRAMMAR, examples=0).batch(ROWS)
    assert batch.prefix.shape[1] > 10  # the system message is shared
    assert batch.tokens == int(batch.full()[2].sum())

    shared = loss(model, batch)
    shared.backward()
    shared_grads = _grads(model)
    ids, labels, attention = batch.full()
    plain = model(input_ids=ids, attention_mask=attention, labels=labels).loss
    plain.backward()
    plain_grads = _grads(model)

    assert shared.item() == pytest.approx(plain.item(), rel=1e-5)
    assert shared_grads.keys() == plain_grads.keys() and len(shared_grads) == 6
    for name, grad in plain_grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-6)


def test_exact_rows_counts_the_rows_whose_every_target_is_the_models_greedy_choice(lora_model):
    import torch

    model, tokenizer = lora_model
    encoder = Encoder(tokenizer, GRAMMAR, examples=0)
    prompts = [encoder.pair(ex)[0] for ex in ROWS]
    with torch.no_grad():
        greedy = [model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=3 + i, do_sample=False, pad_token_id=tokenizer.pad_token_id)[0, len(p):]
                  for i, p in enumerate(prompts)]
        # Rows 0 and 2 ask for the model's own greedy tokens; rows 1 and 3 for the same tokens with the last changed.
        targets = [g.tolist() if i % 2 == 0 else g.tolist()[:-1] + [(int(g[-1]) + 1) % len(tokenizer)]
                   for i, g in enumerate(greedy)]
        rows = list(zip(prompts, targets, strict=True))
        pad = tokenizer.pad_token_id
        assert exact_rows(model, collate(rows, pad=pad)) == 2
        assert exact_rows(model, collate(rows[::2], pad=pad)) == 2
        assert exact_rows(model, collate(rows[1::2], pad=pad)) == 0
