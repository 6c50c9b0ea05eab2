"""vLLM's CPU LoRA ops against ours (service/engine/plugins/lora_products.py), on the embedded model's and
Mistral-7B's shapes.

``python -m bench.lora_ops``. Each case is one LoRA layer's shrink (x @ A^T) and expand (@ B^T) over a batch's
tokens, as the engine calls them; both implementations get the same tensors, take turns, and must agree.
"""

from __future__ import annotations

import asyncio
import time

import torch

from bench.results import Comparison, interleaved, progress, save

COMMAND = "python -m bench.lora_ops"
RANK = 16
SLOTS = 4  # max_loras, or as many as a case's adapters
#: (name, hidden, intermediate, tokens per sequence, adapter slot of each sequence (-1: base model))
CASES = [
    ("prefill, 1 prompt of 512 tokens, 1 adapter (SmolLM2 MLP)", 576, 1536, 512, [0]),
    ("prefill, 4 prompts of 128 tokens, 4 adapters (SmolLM2 MLP)", 576, 1536, 128, [0, 1, 2, 3]),
    ("decode, 32 sequences, 3 adapters + base (SmolLM2 MLP)", 576, 1536, 1, [0, 1, 2, -1] * 8),
    ("prefill, 1 prompt of 256 tokens, 1 adapter (Mistral-7B MLP)", 4096, 14336, 256, [0]),
    ("decode, 32 sequences, 3 adapters + base (Mistral-7B MLP)", 4096, 14336, 1, [0, 1, 2, -1] * 8),
    ("decode, 64 sequences, 64 adapters (SmolLM2 MLP)", 576, 1536, 1, list(range(64))),
    ("decode, 64 sequences, 64 adapters (Mistral-7B MLP)", 4096, 14336, 1, list(range(64))),
]
REPEATS = 15


def _layer(ops, x, lora_a, lora_b, indices, intermediate: int):
    """One LoRA delta: shrink to the rank, expand to the output (what punica_cpu does per projection)."""
    buffer = torch.zeros(x.shape[0], RANK)
    ops["bgmv_shrink"](x, lora_a, buffer, indices, 1.0)
    out = torch.zeros(x.shape[0], intermediate)
    ops["bgmv_expand"](buffer, lora_b, out, indices, True)
    return out


def _timed(ops, *args):
    async def case() -> float:
        started = time.perf_counter()
        _layer(ops, *args)
        return (time.perf_counter() - started) * 1000

    return case


def main() -> None:
    import vllm.lora.ops.torch_ops.lora_ops as vllm_ops

    from service.engine.plugins import lora_products

    if getattr(vllm_ops, "_nl2dsl_patched", False):
        raise SystemExit("vLLM's LoRA ops are already patched in this process; run this module on its own")
    torch.set_num_threads(1)  # what the engine's worker uses on this machine (docs/PLATFORM.md)
    theirs = {"bgmv_shrink": vllm_ops.bgmv_shrink, "bgmv_expand": vllm_ops.bgmv_expand}
    ours = {"bgmv_shrink": lora_products.bgmv_shrink, "bgmv_expand": lora_products.bgmv_expand}
    comparisons = []
    for name, hidden, intermediate, tokens, slots in CASES:
        progress(name)
        torch.manual_seed(0)
        x = torch.randn(tokens * len(slots), hidden)
        count = max(SLOTS, max(slots) + 1)
        lora_a = torch.randn(count, 1, RANK, hidden) * 0.02
        lora_b = torch.randn(count, 1, intermediate, RANK) * 0.02
        indices = torch.repeat_interleave(torch.tensor(slots), tokens)  # what sgmv_* does first
        expected = _layer(theirs, x, lora_a, lora_b, indices.clamp(min=0), intermediate)
        got = _layer(ours, x, lora_a, lora_b, indices, intermediate)
        adapter_rows = indices >= 0
        assert torch.allclose(got[adapter_rows], expected[adapter_rows], atol=1e-4), name
        assert not got[~adapter_rows].any(), "tokens without an adapter must get no LoRA delta"

        medians = asyncio.run(interleaved({
            "vllm": _timed(theirs, x, lora_a, lora_b, indices.clamp(min=0), intermediate),
            "ours": _timed(ours, x, lora_a, lora_b, indices, intermediate),
        }, REPEATS))
        comparisons.append(Comparison(
            group="LoRA ops (one layer, 1 thread)", name=name, value=medians["vllm"], baseline=medians["ours"],
            unit="ms", versus=("vLLM's CPU ops", "ours"), note="speed-up: vLLM's time / ours",
        ))
    save("lora_ops", COMMAND, comparisons)


if __name__ == "__main__":
    main()
