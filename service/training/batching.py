"""Training examples -> batches that share their prompt's prefix, and the model's logits on target tokens only.

Every prompt of a DSL starts with the same system message (and the same few-shot examples), so a batch's rows
share their first tokens: cron's 31 of 56 on average, sql's 59 of 119. A step computes that prefix once and
lets each row attend to it (its keys and values repeated over the batch, gradients flowing back through them),
and applies the 49K-word output layer only where a label is learned, never on prompt or padding. The loss and
its gradients are the ones of the plain full-sequence forward pass (``tests/unit/test_batching.py``), for
about half the arithmetic; ``bench/training.py`` measures both side by side.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.grammars import Example, Grammar
from service.prompts import build_prompt

__all__ = ["Batch", "Encoder", "collate", "exact_rows", "loss", "target_logits"]

IGNORE = -100


@dataclass
class Batch:
    """``prefix`` (1 x P) shared by every row; ``ids``/``labels``/``attention`` (B x W) the rest of each row."""

    prefix: Any
    ids: Any
    labels: Any
    attention: Any

    @property
    def tokens(self) -> int:
        """Tokens the model reads for this batch as rows (prompt and target, padding excluded)."""
        return int(self.attention.sum()) + self.prefix.shape[1] * self.ids.shape[0]

    def to(self, device) -> Batch:
        return Batch(*(t.to(device) for t in (self.prefix, self.ids, self.labels, self.attention)))

    def full(self):
        """The same rows as plain full sequences (ids, labels, attention): what a batch without sharing is."""
        import torch

        rows, width = self.ids.shape
        prefix = self.prefix.expand(rows, -1)
        ids = torch.cat([prefix, self.ids], dim=1)
        labels = torch.cat([torch.full_like(prefix, IGNORE), self.labels], dim=1)
        attention = torch.cat([torch.ones_like(prefix), self.attention], dim=1)
        return ids, labels, attention


class Encoder:
    """Examples -> :class:`Batch`; labels are ``IGNORE`` on the prompt, so only DSL tokens are learned.

    ``shots``: the few-shot examples each training prompt carries (:class:`service.training.shots.RetrievedShots`);
    without it, the grammar's first ``examples`` in every prompt.
    """

    def __init__(self, tokenizer, grammar: Grammar, *, examples: int,
                 shots: Callable[[Example], Sequence[Example]] | None = None) -> None:
        self.tokenizer = tokenizer
        self.grammar = grammar
        self.eos = tokenizer.eos_token
        self.examples = grammar.examples[:examples] if examples else ()
        self.shots = shots

    def pair(self, ex: Example, *, shots: bool = False) -> tuple[list[int], list[int]]:
        """(prompt ids, target ids) of one example: the serving prompt, then the code and end of turn."""
        examples = self.shots(ex) if shots and self.shots is not None else self.examples
        prompt = build_prompt(self.tokenizer, self.grammar, ex.text, context=ex.context, examples=examples)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        target_ids = self.tokenizer(ex.code + self.eos, add_special_tokens=False)["input_ids"]
        return prompt_ids, target_ids

    def batch(self, rows: list[Example], *, shots: bool = False) -> Batch:
        """``shots``: training rows, whose prompts carry retrieved examples (held-out checks never do)."""
        return collate([self.pair(ex, shots=shots) for ex in rows], pad=self.tokenizer.pad_token_id)

    def batches(self, rows: list[Example], size: int, rng: random.Random) -> list[Batch]:
        """Training rows -> batches of ``size`` rows of about the same length, in random order.

        A batch is as wide as its longest row: drawn at random, NL2Bash's rows (a median of 76 tokens, some
        400) were mostly padding. Sorted first, each batch holds rows of one length band.
        """
        pairs = sorted((self.pair(ex, shots=True) for ex in rows), key=lambda p: len(p[0]) + len(p[1]))
        batches = [collate(pairs[i : i + size], pad=self.tokenizer.pad_token_id) for i in range(0, len(pairs), size)]
        rng.shuffle(batches)
        return batches


def collate(pairs: list[tuple[list[int], list[int]]], *, pad: int, share: bool = True) -> Batch:
    """(prompt ids, target ids) rows -> a :class:`Batch`: their common prompt prefix once, the rest padded.

    ``share=False`` keeps every row whole (an empty prefix): the plain batch, for comparisons.
    """
    import torch

    # The shared prefix stops a token short of the shortest prompt: every row's first label is then
    # predicted from a position of its own part, never from the shared one.
    shared = len(os.path.commonprefix([p for p, _ in pairs])) if share else 0
    shared = max(0, min(shared, min(len(p) for p, _ in pairs) - 1))
    rests = [(p[shared:], t) for p, t in pairs]
    width = max(len(p) + len(t) for p, t in rests)
    ids = torch.full((len(pairs), width), pad, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, (p, t) in enumerate(rests):
        seq = p + t
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(p) : len(seq)] = torch.tensor(t)
        attention[i, : len(seq)] = 1
    prefix = torch.tensor([pairs[0][0][:shared]], dtype=torch.long)
    return Batch(prefix, ids, labels, attention)


def target_logits(model, batch: Batch):
    """(logits, gold, row) for every learned token: the prefix computed once, the output layer on targets only.

    ``model`` is the causal LM (a peft model or the plain one); ``row`` says which row each token belongs to.
    """
    import torch

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    rows, width = batch.ids.shape
    shared = batch.prefix.shape[1]
    cache = None
    if shared:
        cache = lm.model(input_ids=batch.prefix, use_cache=True).past_key_values
        cache.batch_repeat_interleave(rows)
    device = batch.ids.device
    attention = torch.cat([torch.ones((rows, shared), dtype=batch.attention.dtype, device=device), batch.attention],
                          dim=1)
    positions = torch.arange(shared, shared + width, device=device).expand(rows, -1)
    hidden = lm.model(input_ids=batch.ids, attention_mask=attention, position_ids=positions,
                      past_key_values=cache, use_cache=cache is not None).last_hidden_state
    gold = batch.labels[:, 1:]
    learned = gold != IGNORE
    logits = lm.lm_head(hidden[:, :-1][learned])
    return logits, gold[learned], learned.nonzero()[:, 0]


def loss(model, batch: Batch):
    """Mean cross-entropy over the batch's learned tokens (what the full forward pass with labels returns)."""
    import torch

    logits, gold, _ = target_logits(model, batch)
    return torch.nn.functional.cross_entropy(logits.float(), gold)


def exact_rows(model, batch: Batch) -> int:
    """Rows whose every learned token is the model's argmax given the gold prefix (teacher forcing)."""
    import torch

    logits, gold, row = target_logits(model, batch)
    wrong = torch.zeros(batch.ids.shape[0], device=gold.device).index_add_(0, row, (logits.argmax(-1) != gold).float())
    return int((wrong == 0).sum())
