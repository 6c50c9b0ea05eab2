"""Step 1 of onboarding: pairs -> a checked dataset (every code parsed with the grammar, duplicates out, split).

Each line of the pairs file is ``{"text", "code", "context"?}``. A line that is not such an object, or whose
code does not parse with the grammar as written, is rejected with its line number and lark's position. Exact
duplicates (same text, code and context after trimming) are dropped; a text that appears with two different
codes keeps its first. The rest is shuffled with a fixed seed and split: the held-out part is never trained
on and is what every configuration is scored on. A team with a test set of its own passes it instead of a split.

Each parse has the bound ``/validate``'s have (``parse_timeout_s``, here in CPU seconds): a code past it is
rejected, never waited for. An ambiguous grammar compiles fast, and its child once parsed every pair without a
bound (66 CPU-seconds while another tenant's requests took 8-29 s instead of 1: docs/SECURITY.md, 17). A large
file is parsed by one process per core, each parse under the same bound.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.config import Settings
from service.errors import RequestInvalid
from service.grammars import Example, Grammar, ParseError, ParseResult

__all__ = ["Dataset", "Reject", "build_dataset", "load_pairs"]

#: From this many pairs on, the codes are parsed by one process per core, at most MAX_WORKERS of them.
PARALLEL_FROM = 2000
MAX_WORKERS = 4


@dataclass(frozen=True)
class Reject:
    line: int
    message: str
    #: Where in the code lark stopped (1-based), when the code did not parse.
    code_line: int | None = None
    code_column: int | None = None


@dataclass
class Dataset:
    train: list[Example]
    heldout: list[Example]
    rejects: list[Reject] = field(default_factory=list)
    duplicates: int = 0
    conflicting: int = 0

    @property
    def kept(self) -> int:
        return len(self.train) + len(self.heldout)

    def summary(self) -> dict[str, Any]:
        return {"train": len(self.train), "heldout": len(self.heldout), "rejected": len(self.rejects),
                "duplicates": self.duplicates, "conflicting": self.conflicting}


def load_pairs(path: Path) -> tuple[list[tuple[int, Example]], list[Reject]]:
    """The pairs of a JSONL file with their line numbers, and the lines that are not pairs."""
    pairs: list[tuple[int, Example]] = []
    rejects: list[Reject] = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, code = row["text"], row["code"]
            if not (isinstance(text, str) and isinstance(code, str) and text.strip() and code.strip()):
                raise TypeError
            context = row.get("context")
            pairs.append((number, Example(text.strip(), code.strip(), str(context) if context else None)))
        except (ValueError, KeyError, TypeError):
            rejects.append(Reject(number, 'not a JSON object with non-empty string "text" and "code"'))
    return pairs, rejects


def build_dataset(grammar: Grammar, path: Path, *, heldout: float = 0.2, max_heldout: int = 200,
                  min_heldout: int = 5, min_pairs: int = 20, seed: int = 0, test_path: Path | None = None,
                  parse_timeout_s: float | None = None) -> Dataset:
    """Check every pair against ``grammar``, drop duplicates, split; RequestInvalid if too few pairs remain.

    ``test_path``: the team's own held-out file instead of a split (at most ``max_heldout`` of its pairs, drawn
    with the seed); a training pair with the same request as one of them is left out of training.
    """
    timeout_s = Settings().parse_timeout_s if parse_timeout_s is None else parse_timeout_s
    kept, rejects, duplicates, conflicting = _checked(grammar, path, timeout_s)
    if len(kept) < min_pairs:
        raise RequestInvalid(
            f"{len(kept)} usable pairs in {path} (at least {min_pairs} are needed); {len(rejects)} rejected",
            detail=[{"line": r.line, "message": r.message} for r in rejects[:20]],
        )
    random.Random(seed).shuffle(kept)
    if test_path is None:
        n_heldout = max(min_heldout, min(max_heldout, round(heldout * len(kept))))
        return Dataset(train=kept[n_heldout:], heldout=kept[:n_heldout], rejects=rejects, duplicates=duplicates,
                       conflicting=conflicting)
    test, test_rejects, _, _ = _checked(grammar, test_path, timeout_s)
    if len(test) < min_heldout:
        raise RequestInvalid(f"{len(test)} usable pairs in the held-out file {test_path} (at least {min_heldout})",
                             detail=[{"line": r.line, "message": r.message} for r in test_rejects[:20]])
    random.Random(seed).shuffle(test)
    test = test[:max_heldout]
    asked = {(ex.text.lower(), ex.context) for ex in test}
    train = [ex for ex in kept if (ex.text.lower(), ex.context) not in asked]
    rejects += [Reject(r.line, f"held-out file: {r.message}", r.code_line, r.code_column) for r in test_rejects]
    return Dataset(train=train, heldout=test, rejects=rejects, duplicates=duplicates + len(kept) - len(train),
                   conflicting=conflicting)


def _checked(grammar: Grammar, path: Path, timeout_s: float) -> tuple[list[Example], list[Reject], int, int]:
    """The file's pairs that parse, once each: (kept, rejects, duplicates, conflicting)."""
    pairs, rejects = load_pairs(path)
    seen: set[tuple[str, str, str | None]] = set()
    codes: dict[tuple[str, str | None], str] = {}
    kept: list[Example] = []
    duplicates = conflicting = 0
    errors = _parse_all(grammar, [example.code for _, example in pairs], timeout_s)
    for (number, example), error in zip(pairs, errors, strict=True):
        if error is not None:
            rejects.append(Reject(number, f"the code does not parse: {error.message}", error.line, error.column))
            continue
        key = (example.text.lower(), example.code, example.context)
        if key in seen:
            duplicates += 1
            continue
        first = codes.setdefault((example.text.lower(), example.context), example.code)
        if first != example.code:
            conflicting += 1
            continue
        seen.add(key)
        kept.append(example)
    rejects.sort(key=lambda r: r.line)
    return kept, rejects, duplicates, conflicting


def _parse_all(grammar: Grammar, codes: list[str], timeout_s: float) -> list[ParseError | None]:
    """Why each code does not parse (None: it does), in order. Many codes are parsed by one process per core
    (at most ``MAX_WORKERS``), forked with the grammar: lark's Earley parser is Python, so NL2Bash's 12,607
    commands took 150 s in one."""
    global _forked
    workers = min(MAX_WORKERS, len(os.sched_getaffinity(0)))
    if len(codes) < PARALLEL_FROM or workers < 2:
        return [_parse(grammar, code, timeout_s).error for code in codes]
    _forked = grammar, timeout_s
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(_forked_parse, codes, chunksize=64))
    finally:
        _forked = None


#: What a forked worker parses with: the grammar and the bound.
_forked: tuple[Grammar, float] | None = None


def _forked_parse(code: str) -> ParseError | None:
    """In a worker process (its main thread, where the CPU bound's signal lands)."""
    grammar, timeout_s = _forked
    return _parse(grammar, code, timeout_s).error


class _TooLong(BaseException):
    """Past the parse's bound: a BaseException, so that no ``except Exception`` in the parser swallows it."""


def _parse(grammar: Grammar, code: str, timeout_s: float) -> ParseResult:
    """``grammar.parse(code)``, stopped after ``timeout_s`` CPU seconds (invalid, saying so)."""
    try:
        with _cpu_bound(timeout_s):
            return grammar.parse(code)
    except _TooLong:
        return ParseResult(valid=False, error=ParseError(f"it could not be parsed within {timeout_s:g} s of CPU "
                                                         "(the bound /validate has)"))


@contextlib.contextmanager
def _cpu_bound(seconds: float) -> Iterator[None]:
    """Raise _TooLong in the block after ``seconds`` of this process's CPU time (a profiling timer: lark is
    Python, so the signal lands between its steps). Signals reach the main thread only: elsewhere (a test's
    worker thread) the block runs unbounded, as onboarding runs the check in its main thread."""
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return

    def stop(signum, frame) -> None:  # noqa: ANN001 - signal's signature
        raise _TooLong

    def unraisable(report: Any) -> None:
        # The signal can land in a finalizer (a __del__, a weakref callback), where Python cannot raise it and
        # reports it instead; the timer fires again 50 ms later, so such a report is dropped, not printed.
        if not isinstance(report.exc_value, _TooLong):
            hook(report)

    hook = sys.unraisablehook
    sys.unraisablehook = unraisable
    previous = signal.signal(signal.SIGPROF, stop)
    signal.setitimer(signal.ITIMER_PROF, seconds, 0.05)  # and again every 50 ms until the block ends
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
        sys.unraisablehook = hook
