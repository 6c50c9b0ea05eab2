"""The engine's own wall (service/engine/plugins/guard.py): vLLM's LoRA manager, wrapped by the plugin, around
fake layers.

vLLM's ``activate_adapter`` names a slot for an adapter, then copies layer by layer; a copy that fails half-way
once left the slot named for the new adapter with the previous adapter's weights in the later layers
(docs/SECURITY.md, 13). These run vLLM's own manager methods (no engine) on layers that record what they get.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from service.engine.plugins import guard as lora_guard


class _Layer:
    """A LoRA layer's slot buffers (2 slots, rank 16) and what was written to them."""

    def __init__(self, in_features: int, out_features: int, *, fails: bool = False) -> None:
        self.lora_a_stacked = (torch.zeros(2, 1, 16, in_features),)
        self.lora_b_stacked = (torch.zeros(2, 1, out_features, 16),)
        self.fails = fails
        self.slots: dict[int, str] = {}

    def set_lora(self, index: int, lora_a, lora_b) -> None:
        if self.fails:
            raise RuntimeError("The size of tensor a (576) must match the size of tensor b (577)")
        self.slots[index] = "written"

    def reset_lora(self, index: int) -> None:
        self.slots.pop(index, None)


def _manager(layers: dict[str, _Layer], weights: dict[str, SimpleNamespace]):
    from vllm.lora.model_manager import LoRAModelManager

    lora_guard.register()
    manager = LoRAModelManager.__new__(LoRAModelManager)
    manager.modules = layers
    manager.lora_index_to_id = [None, None]
    manager._active_adapters = {}
    manager._registered_adapters = {7: SimpleNamespace(id=7, get_lora=weights.get)}
    manager.is_pooling_model = False
    return manager


def _weights(a: list[int], b: list[int]) -> SimpleNamespace:
    return SimpleNamespace(lora_a=torch.zeros(*a), lora_b=torch.zeros(*b))


def test_weights_that_do_not_fit_a_slot_are_named_and_fitting_ones_pass():
    layers = {"layers.0.o_proj": _Layer(576, 576)}
    assert lora_guard.weights_misfit(_manager(layers, {}), SimpleNamespace(
        get_lora={"layers.0.o_proj": _weights([8, 576], [576, 8])}.get)) is None
    problem = lora_guard.weights_misfit(_manager(layers, {}), SimpleNamespace(
        get_lora={"layers.0.o_proj": _weights([8, 577], [576, 8])}.get))
    assert problem and "layers.0.o_proj" in problem and "[8, 577]" in problem


def test_an_activation_that_fails_half_way_leaves_no_slot_named_for_the_adapter():
    pytest.importorskip("vllm")
    layers = {"layers.0.q_proj": _Layer(576, 576), "layers.0.o_proj": _Layer(576, 576, fails=True)}
    weights = {name: _weights([8, 576], [576, 8]) for name in layers}
    manager = _manager(layers, weights)
    with pytest.raises(RuntimeError, match="must match"):
        manager.activate_adapter(7)
    assert manager.lora_index_to_id == [None, None] and 7 not in manager._active_adapters
    assert all(not layer.slots for layer in layers.values())  # the first layer's copy is undone too
