"""Planning the CPU LoRA op's batch: which tokens meet which adapter's weights, worked out once per batch.

A batch's per-token adapter slots (-1: none) become a :class:`Plan` that every LoRA layer of the step reuses:
the adapters' segments (SGMV's, as Punica and S-LoRA cut them), the rows to read where vLLM's grouped batch
already has them, padding for one batched product when the segments are alike, and for a batch of many
adapters the per-token runs (:class:`Many`). A token without an adapter is never planned into a product.
The products themselves are :mod:`.lora_products`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

__all__ = ["PADDING", "Many", "Plan", "Plans"]

_FUSED_ADAPTERS = 8  # batches of up to this many adapters read a layer's weights for all of them as one matrix
PADDING = 8  # padded rows a batched product may add beyond as many as the batch's tokens with an adapter
_WIDE = 8  # with more adapters: a run of this many tokens of one adapter (a prompt) gets a product of its own
_SEGMENT_ROWS = 16  # a grouped batch with this many tokens per adapter or more: a product per adapter, in place
_PLANS_KEPT = 4


@dataclass(frozen=True)
class Plan:
    """Which tokens meet which adapter's weights, worked out once per batch (every LoRA layer reuses it).

    Segmented as SGMV does (Punica, S-LoRA): the tokens with an adapter taken by adapter, and each adapter's
    weights multiplied once over all its tokens, so a layer costs a few tensor operations per adapter, whatever
    the tokens; when the adapters have like numbers of tokens (decoding), one batched product for all of them.
    vLLM's batch comes grouped by adapter (``lora_patches.group_by_adapter``), so the tokens are read where they
    sit; a batch that is not (a test's, another caller's) is sorted into a copy first. A batch of more than
    ``Plans.fused_adapters`` adapters reads each decoding token's own weights instead, and each prompt its own
    adapter's (``Many``): its adapters change from step to step, and a matrix of all their weights would be made
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
    many: Many | None  # the batch as the per-token products read it, when it has more than ``Plans.fused_adapters``


@dataclass(frozen=True)
class Many:
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


class Plans:
    """Makes each batch's :class:`Plan` and keeps the last few: a step alternates between the tokens' and the
    sampler's indices, and every LoRA layer of a step asks for the same plan."""

    def __init__(self, *, fused_adapters: int = _FUSED_ADAPTERS) -> None:
        #: Batches of up to this many adapters read a layer's weights for all of them as one matrix.
        self.fused_adapters = fused_adapters
        self._recent: list[Plan] = []  # the most recent first

    def __call__(self, indices: torch.Tensor) -> Plan:
        """The plan for ``indices`` (slot per token, -1: no adapter), from the cache when the batch is the same."""
        for plan in self._recent:
            if plan.indices.shape == indices.shape and torch.equal(plan.indices, indices):
                return plan
        runs = _runs(indices)
        with_adapter = [run for run in runs if run[0] >= 0]
        adapters = tuple(sorted({slot for slot, _, _ in with_adapter}))
        order, segments, padded, many = None, [(0, 0, len(indices))], None, None
        if len(adapters) > self.fused_adapters:
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
        plan = Plan(indices.clone(), adapters, order, segments, padded, many)
        self._recent = [plan, *self._recent[: _PLANS_KEPT - 1]]
        return plan


def _runs(indices: torch.Tensor) -> list[tuple[int, int, int]]:
    """(slot, start, stop) of each run of one slot in ``indices``."""
    slots, counts = torch.unique_consecutive(indices, return_counts=True)
    bounds = [0, *itertools.accumulate(counts.tolist())]
    return [(slot, bounds[i], bounds[i + 1]) for i, slot in enumerate(slots.tolist())]


def _padded(order: torch.Tensor, segments: list[tuple[int, int, int]], counts: list[int]):
    """``Plan.padded`` for the rows ``order`` cut into ``segments``, or None when padding would add too many."""
    length = max(counts)
    if len(counts) * length > 2 * len(order) + PADDING:
        return None
    rows = torch.zeros(len(counts), length, dtype=torch.long)
    real = torch.zeros(len(counts), length, dtype=torch.bool)
    for position, start, stop in segments:  # padding repeats the segment's own first row: no other row is read
        rows[position], real[position, : stop - start] = order[start], True
        rows[position, : stop - start] = order[start:stop]
    kept = None if bool(real.all()) else real.flatten().nonzero().squeeze(1)
    rows = rows.flatten()
    return rows, kept, rows if kept is None else rows[kept], length


def _many(indices: torch.Tensor, runs: list[tuple[int, int, int]]) -> Many:
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
    return Many([r for r in with_adapter if r[2] - r[1] >= _WIDE], narrow_runs, narrow, indices[rows])
