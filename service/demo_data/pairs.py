"""What the onboarding demo generators (cron, logq) share: draw ``n`` pairs with a seed, write them as JSONL."""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

__all__ = ["fresh", "generate", "main", "roughen"]


def generate(n: int, seed: int, one: Callable[[random.Random], tuple[str, str]],
             messy: Callable[[random.Random, str], str]) -> list[dict[str, str]]:
    """``n`` pairs ``{"text", "code"}``: ``one`` draws a request and its code, ``messy`` roughens the request."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        text, code = one(rng)
        rows.append({"text": messy(rng, text), "code": code})
    return rows


def roughen(rng: random.Random, text: str, *, openers: Sequence[str], typos: dict[str, str],
            endings: Sequence[str], then: Callable[[random.Random, str], str] | None = None) -> str:
    """A request as people type it: an opener, now and then a typo, ``then`` (a DSL's own roughening), a
    capital letter, an ending."""
    text = rng.choice(openers) + text
    if rng.random() < 0.15:
        word = rng.choice([w for w in typos if w in text] or [""])
        if word:
            text = text.replace(word, typos[word], 1)
    if then is not None:
        text = then(rng, text)
    if rng.random() < 0.2:
        text = text.capitalize()
    if rng.random() < 0.1:
        text += rng.choice(endings)
    return text


def fresh(generate_n: Callable[..., list[dict[str, str]]], count: int, *, seed: int,
          seen: Iterable[str]) -> list[dict[str, str]]:
    """The first ``count`` pairs a seed draws whose request is not in ``seen`` nor drawn before: a test set
    apart from the pairs an adapter was trained and checked on. (A seed's first k pairs are the same however
    many are drawn, so drawing more keeps the ones already taken.)"""
    seen = set(seen)
    size = count
    while True:
        taken, texts = [], set(seen)
        for row in generate_n(size, seed=seed):
            if row["text"] not in texts:
                texts.add(row["text"])
                taken.append(row)
                if len(taken) == count:
                    return taken
        if size >= 64 * count + len(seen):  # the generator has few requests left to give
            raise ValueError(f"seed {seed} drew only {len(taken)} new requests in {size} pairs")
        size *= 2


def main(generate_n: Callable[..., list[dict[str, str]]]) -> None:
    """``python -m <generator> OUT.jsonl [N] [--seed S] [--apart-from FILE.jsonl ...]``: write N pairs (default
    1,000); with ``--apart-from``, only requests in none of those files, each once."""
    parser = argparse.ArgumentParser(prog=f"python -m {generate_n.__module__}")
    parser.add_argument("out", type=Path)
    parser.add_argument("count", type=int, nargs="?", default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--apart-from", type=Path, nargs="+", default=[],
                        help="JSONL pairs whose requests the new ones must not repeat (a training set)")
    args = parser.parse_args()
    if args.apart_from:
        from service.grammars import load_examples

        seen = [example.text for path in args.apart_from for example in load_examples(path)]
        rows = fresh(generate_n, args.count, seed=args.seed, seen=seen)
    else:
        rows = generate_n(args.count, seed=args.seed)
    args.out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {len(rows)} pairs to {args.out}")
