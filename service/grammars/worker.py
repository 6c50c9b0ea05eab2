"""The grammar worker: a child process that compiles tenants' grammars and parses code with them.

Started by :class:`service.grammars.sandbox.GrammarSandbox`, one pipe each way::

    -> ("ready",)                                once imported and limited, before any job
    <- (key, owner, source, text, start, limits, codes)
                                                 a job: the grammar (cached by key, in the owner's share of the
                                                 cache) and the codes to parse
    -> ("compiled", problem | None, report)      the grammar compiled (report: engine text, warnings, seconds)
    -> ("parsed", ParseResult)                   once per code, in order
    -> ("failed", "memory")                      out of memory: the worker says so and exits

Its address space is capped at what it uses at rest plus ``memory_mb`` (RLIMIT_AS), so a grammar that
wants more fails here with MemoryError instead of inviting the kernel's OOM killer to pick the server or
the engine (the sandbox kills a worker at half that, by its resident memory; this is the backstop).
It runs in an empty working directory: lark reads ``%import`` files relative to it.
"""

from __future__ import annotations

import gc
import os
import resource
import tempfile
from collections import OrderedDict
from multiprocessing.connection import Connection

import lark

from service.errors import GrammarInvalid
from service.grammars.bounds import DecodingLimits
from service.grammars.compile import check_grammar
from service.grammars.grammar import ParseError, ParseResult, parse_with

__all__ = ["main"]

#: Compiled parsers a worker keeps (by grammar digest), least recently used out first ...
_CACHED = 64
#: ... and at most this many of one owner's: a tenant uploading in a loop evicts its own parsers, not another's
#: (140 uploads in 2.3 s once pushed another tenant's parser out: its /validate went from 0.10 to 1.05 s).
_CACHED_PER_OWNER = 16


class _ParserCache:
    """Compiled parsers by grammar digest, within a per-owner share of the whole."""

    def __init__(self, *, total: int = _CACHED, per_owner: int = _CACHED_PER_OWNER) -> None:
        self.total, self.per_owner = total, per_owner
        self._entries: OrderedDict[str, tuple[str | None, lark.Lark, dict]] = OrderedDict()

    def get(self, key: str) -> tuple[lark.Lark, dict] | None:
        if key not in self._entries:
            return None
        self._entries.move_to_end(key)
        _, parser, report = self._entries[key]
        return parser, report

    def put(self, key: str, owner: str | None, parser: lark.Lark, report: dict) -> None:
        self._entries[key] = (owner, parser, report)
        self._entries.move_to_end(key)
        mine = [k for k, (o, _, _) in self._entries.items() if o == owner]
        for stale in mine[: max(0, len(mine) - self.per_owner)]:
            del self._entries[stale]
        while len(self._entries) > self.total:
            # The owner with the most entries gives up its least recently used one.
            counts: dict[str | None, int] = {}
            for o, _, _ in self._entries.values():
                counts[o] = counts.get(o, 0) + 1
            largest = max(counts, key=lambda o: counts[o])
            del self._entries[next(k for k, (o, _, _) in self._entries.items() if o == largest)]

    def clear(self) -> None:
        self._entries.clear()


def main(conn: Connection, memory_mb: int) -> None:
    """The worker's loop: one job at a time until the pipe closes."""
    _limit_memory(memory_mb)
    os.chdir(tempfile.mkdtemp(prefix="nl2dsl-grammar-"))
    parsers = _ParserCache()
    conn.send(("ready",))
    while True:
        try:
            key, owner, source, text, start, limits, codes = conn.recv()
        except (EOFError, OSError):
            return
        try:
            _run(conn, parsers, key, owner, source, text, start, limits, codes)
            continue
        except MemoryError:
            pass
        # Outside the handler, the exception's frames (and what they held) are gone: room to say so.
        parsers.clear()
        gc.collect()
        conn.send(("failed", "memory"))
        return


def _run(conn: Connection, parsers: _ParserCache, key: str, owner: str | None, source: str, text: str,
         start: str, limits: DecodingLimits, codes: list[str]) -> None:
    cached = parsers.get(key)
    if cached is None:
        try:
            checked = check_grammar(text, start=start, source=source, limits=limits)
        except GrammarInvalid as exc:
            conn.send(("compiled", {"message": exc.message, "detail": exc.detail}, None))
            return
        report = {"engine_text": checked.engine_text, "bounded": checked.bounded, "warnings": checked.warnings,
                  "seconds": checked.seconds}
        parsers.put(key, owner, checked.parser, report)
        cached = checked.parser, report
    parser, report = cached
    conn.send(("compiled", None, report))
    for code in codes:
        try:
            result = parse_with(parser, code)
        except RecursionError:
            result = ParseResult(valid=False, error=ParseError("the code nests too deeply to parse"))
        conn.send(("parsed", result))


def _limit_memory(memory_mb: int) -> None:
    """Cap the address space at what the worker uses now plus ``memory_mb`` (Linux; elsewhere no cap)."""
    try:
        with open("/proc/self/statm") as f:
            in_use = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = in_use + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
