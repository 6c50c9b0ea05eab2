"""What the onboarding demo generators (cron, logq) share: draw ``n`` pairs with a seed, write them as JSONL."""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["generate", "main"]


def generate(n: int, seed: int, one: Callable[[random.Random], tuple[str, str]],
             messy: Callable[[random.Random, str], str]) -> list[dict[str, str]]:
    """``n`` pairs ``{"text", "code"}``: ``one`` draws a request and its code, ``messy`` roughens the request."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        text, code = one(rng)
        rows.append({"text": messy(rng, text), "code": code})
    return rows


def main(generate_n: Callable[[int], list[dict[str, str]]]) -> None:
    """``python -m <generator> OUT.jsonl [N]``: write N pairs (default 1,000)."""
    out, count = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    out.write_text("".join(json.dumps(row) + "\n" for row in generate_n(count)))
    print(f"wrote {count} pairs to {out}")
