"""Compile an uploaded grammar within a time bound, in a separate process that is killed when it overruns.

A grammar from a user (``POST /dsls``) can be huge or pathological; compiling it in the server process could
stall every request. The first compile runs in a one-process pool: a grammar that does not compile within
``timeout_s`` is refused (400) and the worker is killed; one that does is compiled again in the server
(milliseconds, now known to terminate) to get the parser objects.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from service.errors import GrammarInvalid
from service.grammars import Example, Grammar, compile_grammar

__all__ = ["compile_upload", "shutdown"]

_pool: ProcessPoolExecutor | None = None


def _ready() -> bool:
    return True


def _check(name: str, text: str, start: str) -> dict | None:
    """In the worker: None if the grammar compiles, else the error's message and detail."""
    try:
        compile_grammar(name, text, start=start, source=f"<{name}>", origin="upload")
    except GrammarInvalid as exc:
        return {"message": exc.message, "detail": exc.detail}
    return None


async def _worker() -> ProcessPoolExecutor:
    """The pool, started (and its imports done) before any timed compile."""
    global _pool
    if _pool is None:
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        try:
            await asyncio.wrap_future(pool.submit(_ready))
        except BrokenProcessPool:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        _pool = pool
    return _pool


def shutdown() -> None:
    """Stop the worker (at service shutdown, or after a compile overran)."""
    global _pool
    pool, _pool = _pool, None
    if pool is None:
        return
    for process in list(getattr(pool, "_processes", {}).values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


async def compile_upload(
    name: str, text: str, *, start: str, timeout_s: float, description: str = "",
    examples: tuple[Example, ...] = (),
) -> Grammar:
    """Compile ``text`` as DSL ``name``; GrammarInvalid (400) if it fails or takes longer than ``timeout_s``."""
    try:
        pool = await _worker()
        problem = await asyncio.wait_for(asyncio.wrap_future(pool.submit(_check, name, text, start)), timeout_s)
    except BrokenProcessPool as exc:  # the worker died (e.g. out of memory on a huge grammar)
        shutdown()
        raise GrammarInvalid(f"<{name}>: compiling the grammar crashed its worker; simplify it",
                             detail={"source": f"<{name}>", "limit": "compile_crash"}) from exc
    except TimeoutError:
        shutdown()
        raise GrammarInvalid(
            f"<{name}>: the grammar did not compile within {timeout_s:g} s; simplify it",
            detail={"source": f"<{name}>", "limit": "compile_time", "timeout_s": timeout_s},
        ) from None
    if problem:
        raise GrammarInvalid(problem["message"], detail=problem["detail"])
    return compile_grammar(name, text, start=start, source=f"<{name}>", description=description,
                           examples=examples, origin="upload", structure=text, tenant=None)
