"""What the CPU computes natively, for the choices that depend on it (the engine's and the trainer's precision)."""

from __future__ import annotations

__all__ = ["native_bfloat16"]


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX); elsewhere torch emulates it, slower
    than float32."""
    import torch

    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
