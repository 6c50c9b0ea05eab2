"""What the onboarding demo generators (cron, logq) share: draw ``n`` pairs with a seed, write them as JSONL."""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["generate", "main", "roughen"]


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


def main(generate_n: Callable[[int], list[dict[str, str]]]) -> None:
    """``python -m <generator> OUT.jsonl [N]``: write N pairs (default 1,000)."""
    out, count = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    out.write_text("".join(json.dumps(row) + "\n" for row in generate_n(count)))
    print(f"wrote {count} pairs to {out}")
