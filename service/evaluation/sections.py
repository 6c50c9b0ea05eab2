"""Marked sections of a generated document: ``<!-- name -->`` ... ``<!-- /name -->``.

Several tools write into one document (``nl2dsl eval`` writes docs/TRAINING.md, ``bench/training.py`` its
"Training speed" section): each replaces its own section and carries the others over when it rewrites.
"""

from __future__ import annotations

import re

__all__ = ["carry_sections", "replace_section"]

_SECTION = re.compile(r"<!-- ([a-z][a-z0-9._-]*) -->\n.*?\n<!-- /\1 -->", re.DOTALL)


def replace_section(document: str, name: str, body: str) -> str:
    """``document`` with section ``name`` holding ``body`` (appended at the end if it had none)."""
    section = f"<!-- {name} -->\n{body.strip()}\n<!-- /{name} -->"
    for match in _SECTION.finditer(document):
        if match.group(1) == name:
            return document[: match.start()] + section + document[match.end():]
    return document.rstrip("\n") + "\n\n" + section + "\n"


def carry_sections(old: str, new: str) -> str:
    """``new`` with every marked section of ``old`` that ``new`` lacks appended."""
    for match in _SECTION.finditer(old):
        if f"<!-- {match.group(1)} -->" not in new:
            new = new.rstrip("\n") + "\n\n" + match.group(0) + "\n"
    return new
