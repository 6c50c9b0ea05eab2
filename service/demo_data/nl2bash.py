"""NL2Bash as a team's pairs: ``all.nl`` and ``all.cm`` (one request and one command a line) -> JSONL.

NL2Bash (Lin et al., LREC 2018; MIT) holds 12,607 English requests written by programmers, each with the one-line
bash command it asks for. It is not part of this project: point ``nl2dsl data --nl2bash DIR`` at a copy of its
``data/bash`` folder and it writes the pairs ``nl2dsl onboard`` reads (docs/ONBOARDING.md). Lines are read as
they are (a request's surrounding whitespace aside); empty ones and over-long ones are left out and counted, and
nothing else is changed, so the dataset check sees the data as its authors wrote it.

NL2Bash's paper scores two ways: the exact command, and its *template*, the command with every argument replaced
(utilities, flags, operators and structure kept). :func:`template` computes the second on the parse tree of
``data/onboarding/bash/bash.lark``.
"""

from __future__ import annotations

import json
from pathlib import Path

import lark

__all__ = ["MAX_CHARS", "template", "write_pairs"]

#: What an argument becomes in a template.
ARGUMENT = "ARG"
#: Parts of a word that hold commands of their own: such a word keeps its structure, templated in turn.
_NESTED = ("command_sub", "process_sub")

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


def template(tree: lark.Tree) -> str:
    """A command's template from its parse tree: in every simple command the utility and the flags (words that
    start with ``-``) kept, every other word, an assignment's value and a redirection's target ``ARG``."""
    return " ".join(_templated(tree))


def _templated(node: lark.Tree | lark.Token) -> list[str]:
    if isinstance(node, lark.Token):
        return [str(node)] if str(node).strip() else []  # the spaces between words
    if node.data == "simple":
        parts: list[str] = []
        for i, child in enumerate(node.children):
            if isinstance(child, lark.Tree) and child.data == "word":
                utility = not any(isinstance(c, lark.Tree) and c.data == "word" for c in node.children[:i])
                parts += _word(child, keep=utility)
            else:
                parts += _templated(child)
        return ["(simple", *parts, ")"]
    if node.data == "word":
        return _word(node, keep=False)
    if node.data == "assignment":
        return [f"{node.children[0]}=", *([ARGUMENT] if len(node.children) > 1 else [])]
    return [f"({node.data}", *(part for child in node.children for part in _templated(child)), ")"]


def _word(word: lark.Tree, *, keep: bool) -> list[str]:
    text = "".join(str(c) for c in word.children if isinstance(c, lark.Token))
    if keep or (text.startswith("-") and len(word.children) == 1):
        return [text]
    nested = [part for c in word.children if isinstance(c, lark.Tree) and c.data in _NESTED for part in _templated(c)]
    return [ARGUMENT, *nested]
