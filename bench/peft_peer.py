"""The peer path: peft + transformers, one model with several LoRA adapters, a mixed batch in one ``generate``.

What a team without a serving engine would run: ``PeftModel`` with every adapter loaded and ``adapter_names``
picking one per row (peft's mixed-batch inference), greedy, left-padded, a fixed number of new tokens, on one
compute thread like the engine's worker.
"""

from __future__ import annotations

import time
from functools import cache


@cache
def _model(model_dir: str, adapters: tuple[tuple[str, str], ...]):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    (first_name, first_path), *rest = adapters
    model = PeftModel.from_pretrained(base, first_path, adapter_name=first_name)
    for name, path in rest:
        model.load_adapter(path, adapter_name=name)
    return model.eval()


def peft_generate(model_dir: str, adapters: list, prompts: list[list[int]], new_tokens: int) -> float:
    """Generate ``new_tokens`` for each prompt with its adapter (``adapters[i]``) in one batch: tokens/s."""
    import torch

    torch.set_num_threads(1)  # as many compute threads as the engine's worker (docs/PLATFORM.md)
    distinct = tuple(dict.fromkeys((a.name, str(a.path)) for a in adapters))
    model = _model(model_dir, distinct)
    pad = model.config.eos_token_id if model.config.pad_token_id is None else model.config.pad_token_id
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=attention, adapter_names=[a.name for a in adapters],
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=pad)
    elapsed = time.perf_counter() - started
    return (out.shape[1] - width) * len(prompts) / elapsed
