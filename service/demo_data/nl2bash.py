"""NL2Bash as a team's pairs: ``all.nl`` and ``all.cm`` (one request and one command a line) -> JSONL.

NL2Bash (Lin et al., LREC 2018; MIT) holds 12,607 English requests written by programmers, each with the one-line
bash command it asks for. It is not part of this project: point ``nl2dsl data --nl2bash DIR`` at a copy of its
``data/bash`` folder and it writes the pairs ``nl2dsl onboard`` reads (docs/ONBOARDING.md). Lines are read as
they are (a request's surrounding whitespace aside); empty ones and over-long ones are left out and counted, and
nothing else is changed, so the dataset check sees the data as its authors wrote it.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["MAX_CHARS", "write_pairs"]

#: A request or command longer than this is left out (NL2Bash's longest command has 532 characters).
MAX_CHARS = 2000


def write_pairs(source: Path, out: Path) -> tuple[int, int]:
    """Write ``source``'s pairs to ``out`` (JSONL): how many were written and how many left out. ValueError
    when the two files are missing or do not have the same number of lines."""
    requests, commands = source / "all.nl", source / "all.cm"
    if not (requests.is_file() and commands.is_file()):
        raise ValueError(f"{source}: expected NL2Bash's all.nl and all.cm there")
    texts = requests.read_text(encoding="utf-8", errors="replace").split("\n")
    codes = commands.read_text(encoding="utf-8", errors="replace").split("\n")
    if texts and texts[-1] == "" and codes and codes[-1] == "":
        texts, codes = texts[:-1], codes[:-1]
    if len(texts) != len(codes):
        raise ValueError(f"{source}: all.nl has {len(texts)} lines and all.cm {len(codes)}: not pairs")
    written = left_out = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for text, code in zip(texts, codes, strict=True):
            text, code = text.strip(), code.strip()
            if not text or not code or max(len(text), len(code)) > MAX_CHARS:
                left_out += 1
                continue
            f.write(json.dumps({"text": text, "code": code}) + "\n")
            written += 1
    return written, left_out
