"""The CPU LoRA ops that replace vLLM's (service/cpu_lora_fix.py): same numbers, and no delta for index -1."""

from __future__ import annotations

import pytest
import torch
import vllm.lora.ops.torch_ops.lora_ops as vllm_ops

from service import cpu_lora_fix


@pytest.mark.parametrize("slots", [[0], [0, 1, 2, 3], [2, -1, 0, -1, 1]])
def test_grouped_products_match_vllm_and_skip_tokens_without_an_adapter(slots):
    torch.manual_seed(0)
    indices = torch.repeat_interleave(torch.tensor(slots), 3)
    x = torch.randn(len(indices), 32)
    lora_a, lora_b = torch.randn(4, 1, 8, 32), torch.randn(4, 1, 48, 8)

    def layer(shrink, expand, idx):
        buffer, out = torch.zeros(len(idx), 8), torch.ones(len(idx), 48)
        shrink(x, lora_a, buffer, idx, 0.5)
        expand(buffer, lora_b, out, idx, True)
        return out

    theirs = layer(vllm_ops.bgmv_shrink, vllm_ops.bgmv_expand, indices.clamp(min=0))
    ours = layer(cpu_lora_fix._bgmv_shrink, cpu_lora_fix._bgmv_expand, indices)
    with_adapter = indices >= 0
    assert torch.allclose(ours[with_adapter], theirs[with_adapter], atol=1e-4)
    assert torch.equal(ours[~with_adapter], torch.ones_like(ours[~with_adapter]))  # left as the base computed


def test_expand_slice_writes_only_its_slice():
    indices = torch.tensor([1, -1, 0])
    out = torch.zeros(3, 10)
    cpu_lora_fix._bgmv_expand_slice(torch.ones(3, 2), torch.ones(2, 1, 4, 2), out, indices, 3, 4, True)
    assert out[:, :3].eq(0).all() and out[:, 7:].eq(0).all()
    assert out[0, 3:7].eq(2).all() and out[1].eq(0).all() and out[2, 3:7].eq(2).all()
