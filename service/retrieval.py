"""Few-shot examples for a request: the DSL's examples ranked by word overlap with the request text."""

from __future__ import annotations

import re
from collections.abc import Sequence

from service.grammars import Example

__all__ = ["select_examples"]

_WORD = re.compile(r"[a-z0-9#@]+")


def select_examples(examples: Sequence[Example], text: str, *, k: int) -> list[Example]:
    """The ``k`` examples that share the most words with ``text``, most similar last (nearest the request)."""
    if k <= 0 or not examples:
        return []
    query = set(_WORD.findall(text.lower()))
    scored = sorted(
        enumerate(examples),
        key=lambda item: (-len(query & set(_WORD.findall(item[1].text.lower()))), item[0]),
    )
    return [ex for _, ex in scored[:k]][::-1]
