"""The CPU LoRA op's products: each adapter's weights multiplied once over all its tokens.

vLLM's CPU ops gather a full weight matrix per token, so a long prompt's prefill copied every LoRA matrix once
per prompt token (bench/lora_ops.py). Here a batch's :class:`~.lora_plan.Plan` says which rows meet which
adapter, and a layer costs a few tensor operations per adapter, whatever the tokens; index -1 (no adapter) gets
no LoRA delta and is never read. A layer's weights for the batch's adapters are kept ready between steps
(:class:`KeptWeights`). ``nl2dsl::lora_linear`` is a LoRA linear layer as one custom op the compiler keeps
opaque; ``bgmv_*`` replace vLLM's ops of those names (:mod:`.lora_patches` installs both).

The caches belong to :data:`STATE`, one per process (vLLM's worker); a test gives the op a fresh one.
"""

from __future__ import annotations

import functools
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch

from service.engine.plugins.lora_plan import PADDING, Many, Plan, Plans

__all__ = ["STATE", "KeptWeights", "OpState", "bgmv_expand", "bgmv_expand_slice", "bgmv_shrink"]

_GATHER_MAX = 64 * 1024  # weight matrices up to this many values are copied per token, not looped over
_FUSED_BYTES = 512 * 1024 * 1024  # adapter weights kept per (layer, adapters of a batch, dtype), all layers together
_MATRIX_UNIT_ROWS = 64  # from this many tokens in a batch, a bfloat16 model computes its LoRA products in bfloat16
_HOT_CALLS = 4096  # an entry read within this many op calls (a few steps of a large model) is not pushed out


#: The op, registered with torch.library's low-level API: ``torch.library.custom_op`` adds Python wrappers that
#: cost about 30 us a call against about 5 here, and a step calls the op once per LoRA layer (120 for the embedded
#: model), adapters or not.
_LIBRARY = torch.library.Library("nl2dsl", "DEF")
_LIBRARY.define("lora_linear(Tensor(a!) y, Tensor x, Tensor[] lora_a, Tensor[] lora_b, Tensor slots, float scale, "
                "int[] output_slices) -> ()")


def _lora_linear(y: torch.Tensor, x: torch.Tensor, lora_a: list[torch.Tensor], lora_b: list[torch.Tensor],
                 slots: torch.Tensor, scale: float, output_slices: list[int]) -> None:
    """``y[:, slice i] += (x @ lora_a[i][slot] * scale) @ lora_b[i][slot]`` for each token's adapter slot (-1: none).

    The slices' weights are read as one matrix each way (``KeptWeights.fused``): every slice's shrinking rows one after
    another, and their expanding rows block-diagonal, so a layer is one chain of two products per adapter. A
    batch of more than ``Plans.fused_adapters`` adapters reads a prompt's adapter alone that way, and its other tokens'
    adapters slice by slice, token by token (``_add_per_token``)."""
    plan = STATE.plans(slots)
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
                a, b = STATE.kept.fused((*lora_a, *lora_b), (slot,), build, dtype)
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
    _add_products(y, plan, x.to(dtype), STATE.kept.fused((*lora_a, *lora_b), plan.adapters, build, dtype), scale)


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
    sizes only (``_bucket``: oneDNN makes a kernel per shape, docs/bench/history/2026-12-06.md). False, and
    nothing added, for fewer than two prompts, or when the windows would more than double their rows or not fit
    the batch."""
    if len(prompts) < 2:
        return False
    lengths = [stop - start for _, start, stop in prompts]
    size, count = _bucket(max(lengths)), _bucket(len(prompts))
    if len(prompts) * max(lengths) > 2 * sum(lengths) + PADDING or size > len(x):
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



def _dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of a batch's LoRA products: float32 for small batches (small bfloat16 products cost the CPU
    more than float32's), the model's from ``_MATRIX_UNIT_ROWS`` tokens on (bfloat16 runs on the CPU's matrix
    units: a prompt's LoRA products at a third of float32's time). The sum is rounded once into the output."""
    return x.dtype if len(x) >= _MATRIX_UNIT_ROWS else torch.float32


def _add_products(out: torch.Tensor, plan: Plan, inputs: torch.Tensor, weights: tuple[torch.Tensor, ...],
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


def _add_lora(out, inputs, weights, indices, *, scale: float = 1.0, add: bool = True) -> None:
    """``out`` (tokens, n) += each token's input times its adapter's weights, (slots, [1,] >=n, in), times scale
    (``add`` False: set, not added). Tokens with index -1 (no adapter) get nothing. vLLM's own ops gather a whole
    weight matrix per token, a prompt's hundreds included."""
    if not add:
        out.zero_()
    plan = STATE.plans(indices)
    if not plan.adapters:  # no token of this batch has an adapter (base-model requests only)
        return
    if plan.many is not None:
        _add_per_token(out, inputs, (weights,), plan.many, scale)
        return
    width, dtype = out.shape[1], _dtype(inputs)

    def build(index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (_slots(weights, index)[:, :width].to(dtype).transpose(1, 2),)  # (adapters, in, width)

    _add_products(out, plan, inputs.to(dtype), STATE.kept.fused((weights,), plan.adapters, build, dtype, width), scale)


@dataclass
class _Rows:
    """A layer's adapter weights, (slots, n, k) per slice, laid out as rows (slots * k, all slices' n side by
    side), for as long as they are unchanged."""

    of: weakref.ref  # the first weight tensor these rows were made from
    versions: tuple[int, ...]  # the version counters then (vLLM writes a slot in place when it loads an adapter)
    rows: torch.Tensor | None = None  # made on the second use of the same versions, so not while slots churn


class KeptWeights:
    """A process's adapter weights as the products read them, made from vLLM's slots and kept between steps while
    vLLM leaves those slots as they were: a layer's fused matrices for a batch's adapters (bounded by ``room``
    bytes, least recently used out first) and its per-slot row tables for ``embedding_bag``."""

    def __init__(self, *, room: int = _FUSED_BYTES) -> None:
        self.room = room
        self._fused: OrderedDict[tuple, _Fused] = OrderedDict()  # the least recently used first
        self._fused_bytes = 0  # their ``nbytes`` together
        self._calls = 0
        self._rows: dict[tuple[int, int], _Rows] = {}

    def fused(self, stacked: tuple[torch.Tensor, ...], adapters: tuple[int, ...], build,
              *extra) -> tuple[torch.Tensor, ...]:
        """``build(index of adapters)`` for a layer's ``stacked`` weights, kept while the weights are unchanged and
        fit in ``room``. An entry read within the last ``_HOT_CALLS`` calls is never pushed out (the new one
        is made anew per call instead), so a batch larger than the room costs conversions rather than evicting what
        every step reads."""
        self._calls += 1
        key = (id(stacked[0]), adapters, *extra)
        versions = tuple(t._version for t in stacked)
        kept = self._fused.get(key)
        if kept is not None and kept.of() is stacked[0] and kept.versions == versions:
            kept.used = self._calls
            self._fused.move_to_end(key)
            return kept.weights
        if kept is not None:  # made from weights vLLM has since rewritten
            self._fused_bytes -= self._fused.pop(key).nbytes
        fused = _Fused(weakref.ref(stacked[0]), versions, build(torch.tensor(adapters)), self._calls)
        while self._fused_bytes + fused.nbytes > self.room and self._fused \
                and next(iter(self._fused.values())).used < self._calls - _HOT_CALLS:
            self._fused_bytes -= self._fused.popitem(last=False)[1].nbytes
        if self._fused_bytes + fused.nbytes <= self.room:
            self._fused[key] = fused
            self._fused_bytes += fused.nbytes
        return fused.weights

    def rows_of(self, stacked: tuple[torch.Tensor, ...], dtype: torch.dtype) -> torch.Tensor | None:
        """``stacked`` (vLLM's (slots, [1,] n, k) per slice) as rows for ``embedding_bag`` in ``dtype``, or None the
        first time their versions are seen: a copy of every slot costs more than a step's products while adapters
        come and go."""
        key, versions = (id(stacked[0]), len(stacked)), tuple(t._version for t in stacked)
        entry = self._rows.get(key)
        if entry is None or entry.of() is not stacked[0] or entry.versions != versions:
            self._rows[key] = _Rows(weakref.ref(stacked[0]), versions)
            return None
        if entry.rows is None or entry.rows.dtype != dtype:
            weights = torch.cat([t.reshape(-1, *t.shape[-2:]) for t in stacked], dim=1)
            entry.rows = weights.transpose(1, 2).reshape(-1, weights.shape[1]).to(dtype).contiguous()
        return entry.rows


def _add_per_token(out, inputs, stacked: tuple[torch.Tensor, ...], many: Many, scale: float, *,
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
    table = STATE.kept.rows_of(stacked, dtype) if whole else None
    if table is not None:  # each token sums its adapter's k rows weighted by its input: no weight copied
        picks = many.picks_of(slices[0].shape[2])
        products = torch.nn.functional.embedding_bag(picks, table, per_sample_weights=rows.contiguous(), mode="sum")
    else:
        products = torch.bmm(of(many.narrow_slots), rows.unsqueeze(2)).squeeze(2)
    done = 0
    for start, stop in many.narrow:
        out[start:stop].add_(products[done : done + stop - start], alpha=scale)
        done += stop - start


def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
    rank = lora_a_weights.shape[-2]
    _add_lora(output_tensor[:, :rank], inputs, lora_a_weights, lora_indices_tensor, scale=scaling, add=False)


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs: bool = True):
    common_len = min(lora_b_weights.shape[-2], output_tensor.shape[1])
    if inputs.shape[0] == 1 and output_tensor.shape[0] != 1:  # vLLM's own op broadcasts one row to all
        row = output_tensor.new_zeros(1, common_len)
        _add_lora(row, inputs, lora_b_weights, lora_indices_tensor)
        if not add_inputs:
            output_tensor[:, :common_len] = 0
        output_tensor[:, :common_len] += row
        return
    _add_lora(output_tensor[:, :common_len], inputs, lora_b_weights, lora_indices_tensor, add=add_inputs)


def bgmv_expand_slice(
    inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset: int, slice_size: int,
    add_inputs: bool = True,
):
    _add_lora(output_tensor[:, slice_offset : slice_offset + slice_size], inputs, lora_b_weights,
              lora_indices_tensor, add=add_inputs)


@dataclass
class OpState:
    """What the op keeps between calls: the recent batches' plans and the weights made from vLLM's slots."""

    plans: Plans
    kept: KeptWeights


#: The op's state in this process.
STATE = OpState(Plans(), KeptWeights())
