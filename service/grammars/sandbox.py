"""The grammar sandbox: tenants' grammars are compiled, and code is parsed with them, only in worker processes.

A grammar a tenant writes can be slow to compile (lark expands each optional item into two alternatives)
or to parse (Earley on an ambiguous grammar grows about as n^3.7), and lark's regexes and imports are
Python's. In the server that would stall every tenant; here each job runs in one of ``workers`` child
processes (:mod:`service.grammars.worker`) with:

- a time bound per step, counted from when a worker takes the job (not while it waits): compiling gets
  ``compile_timeout_s``, each parse ``parse_timeout_s``; past it the worker is killed and replaced;
- a memory bound: a worker whose resident memory grows ``memory_mb`` past what it used at rest is killed
  (checked ten times a second while a job runs; its address space is capped at twice that as a backstop,
  so the kernel's OOM killer never has to choose between the server and the engine);
- fairness: one owner (tenant) holds at most ``per_owner`` workers at once, so a tenant's slow jobs wait for
  each other, not for everyone; waiting for a worker is bounded too (429 past it).

A worker that is killed takes only its own job with it. Workers start on first use (once, however many jobs
arrive together) and keep compiled parsers cached by grammar digest; ``close`` kills them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import multiprocessing
import os
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service import metrics
from service.errors import GrammarInvalid, ParseLimit, RateLimited
from service.grammars.bounds import DecodingLimits
from service.grammars.grammar import ParseResult

__all__ = ["Compiled", "GrammarSandbox"]

log = logging.getLogger("nl2dsl.sandbox")

#: Seconds a new worker may take to import and report ready.
_START_TIMEOUT_S = 120.0
#: How often a running job's worker memory is looked at.
_MEMORY_CHECK_S = 0.1


class _OverMemory(Exception):
    """The worker used more memory than a job may."""


@dataclass(frozen=True)
class Compiled:
    """What a worker reports of a grammar it compiled, and its parse of each code it was given."""

    engine_text: str
    bounded: tuple[str, ...]
    warnings: tuple[str, ...]
    results: tuple[ParseResult, ...]


class _Worker:
    """One worker process and the pipe to it."""

    def __init__(self, memory_mb: int) -> None:
        from service.grammars import worker

        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        # The worker caps its own address space at twice the budget: the backstop to the check here.
        self.process = context.Process(target=worker.main, args=(child, 2 * memory_mb), daemon=True,
                                       name="nl2dsl-grammar-worker")
        self._child = child
        self._memory_bytes = memory_mb * 2**20
        self._rss_limit: int | None = None
        # The pipe is read and written beside the loop, and a cancelled job leaves that thread running: the pipe is
        # closed only once no thread uses it. Closed under one, its descriptor's number went to the next worker's
        # pipe, and the old thread read that worker's "ready" (a CI run failed on it).
        self._lock = threading.Lock()
        self._in_use = 0
        self._killed = False

    async def start(self) -> None:
        await asyncio.to_thread(self.process.start)
        self._child.close()
        if await self.receive(_START_TIMEOUT_S) != ("ready",):
            raise RuntimeError("the grammar worker did not start")
        at_rest = _resident_bytes(self.process.pid)
        self._rss_limit = at_rest + self._memory_bytes if at_rest is not None else None

    async def receive(self, timeout: float) -> tuple[Any, ...]:
        """The next message; TimeoutError past ``timeout``, _OverMemory past the memory budget, EOFError if the
        worker died."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        fd = self.conn.fileno()
        while True:
            readable = loop.create_future()
            loop.add_reader(fd, lambda f=readable: f.done() or f.set_result(None))
            try:
                async with asyncio.timeout(max(0.0, min(_MEMORY_CHECK_S, deadline - loop.time()))):
                    await readable
                break
            except TimeoutError:
                if self._rss_limit is not None and (_resident_bytes(self.process.pid) or 0) > self._rss_limit:
                    raise _OverMemory from None
                if loop.time() >= deadline:
                    raise
            finally:
                loop.remove_reader(fd)
                # Watching the pipe (uvloop's add_reader) left it non-blocking: a large message would then fail
                # half-way, read here or sent by :meth:`send`. Blocking again while nothing watches it.
                os.set_blocking(fd, True)
        # The message is arriving: read it beside the loop (a parse tree can be large).
        async with asyncio.timeout(timeout):
            return await asyncio.to_thread(self._beside, self.conn.recv)

    async def send(self, job: tuple[Any, ...], timeout: float) -> None:
        """Hand the worker a job beside the loop; one larger than the pipe holds waits while the worker reads it."""
        async with asyncio.timeout(timeout):
            await asyncio.to_thread(self._beside, self.conn.send, job)

    def _beside(self, io: Callable[..., Any], *args: Any) -> Any:
        """Run ``io`` on the pipe (in a thread), which stays open until it returns."""
        with self._lock:
            if self._killed:
                raise EOFError("the worker was stopped")
            self._in_use += 1
        try:
            return io(*args)
        finally:
            with self._lock:
                self._in_use -= 1
                if self._killed and not self._in_use:
                    self.conn.close()

    def kill(self) -> None:
        """Stop the process; its pipe closes now, or when the last thread using it returns (it gets EOF)."""
        if self.process.is_alive():
            self.process.kill()
        with self._lock:
            self._killed = True
            if not self._in_use:
                self.conn.close()

    @property
    def alive(self) -> bool:
        return self.process.is_alive() and not self._killed


class GrammarSandbox:
    """Compile and parse tenants' grammars in worker processes, each step bounded in time and memory."""

    def __init__(self, *, workers: int = 2, memory_mb: int = 512, compile_timeout_s: float = 5.0,
                 parse_timeout_s: float = 2.0) -> None:
        self.workers = max(1, workers)
        self.memory_mb = memory_mb
        self.compile_timeout_s = compile_timeout_s
        self.parse_timeout_s = parse_timeout_s
        #: At most this many workers for one owner at once (all of them when there is only one).
        self.per_owner = max(1, self.workers // 2)
        #: How long a job may wait for a worker before it is refused (the longest a busy worker can be held).
        self.wait_s = 2 * (compile_timeout_s + parse_timeout_s) + 10.0
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._busy: Counter[str | None] = Counter()
        self._changed = asyncio.Condition()
        self._closed = False

    async def compile(self, text: str, *, start: str, source: str, limits: DecodingLimits,
                      codes: Sequence[str] = (), owner: str | None) -> Compiled:
        """Compile ``text`` and parse each of ``codes`` with it; GrammarInvalid (400) if it does not compile,
        or not within the time or memory a compile may use."""
        report, results = await self._run(text, start=start, source=source, limits=limits, codes=codes, owner=owner)
        metrics.GRAMMAR_COMPILE.labels("upload").observe(report["seconds"])
        return Compiled(report["engine_text"], tuple(report["bounded"]), tuple(report["warnings"]), tuple(results))

    async def parse(self, text: str, code: str, *, start: str, source: str, limits: DecodingLimits,
                    owner: str | None) -> ParseResult:
        """Parse ``code`` with the grammar ``text``; ParseLimit (400) past the time or memory a parse may use."""
        _, results = await self._run(text, start=start, source=source, limits=limits, codes=[code], owner=owner)
        return results[0]

    async def close(self) -> None:
        """Kill every worker (at shutdown)."""
        self._closed = True
        for worker in list(self._all):
            worker.kill()
        self._all.clear()
        self._idle.clear()

    async def _run(self, text: str, *, start: str, source: str, limits: DecodingLimits, codes: Sequence[str],
                   owner: str | None) -> tuple[dict[str, Any], list[ParseResult]]:
        key = hashlib.sha256(f"{start}\0{limits}\0{text}".encode()).hexdigest()
        async with self._worker(owner) as worker:
            try:
                await worker.send((key, owner, source, text, start, limits, list(codes)), self.compile_timeout_s)
            except (TimeoutError, OSError) as exc:
                worker.kill()
                limit = "time" if isinstance(exc, TimeoutError) else "crash"
                raise _limit("compile", limit, source, self.compile_timeout_s) from None
            message = await self._step(worker, self.compile_timeout_s, source, stage="compile")
            _, problem, report = message
            if problem is not None:
                raise GrammarInvalid(problem["message"], detail=problem["detail"])
            results = []
            for _ in codes:
                results.append((await self._step(worker, self.parse_timeout_s, source, stage="parse"))[1])
            return report, results

    async def _step(self, worker: _Worker, timeout: float, source: str, *, stage: str) -> tuple[Any, ...]:
        """The worker's next message; a worker that overran, ran out of memory or died is dropped."""
        try:
            message = await worker.receive(timeout)
        except TimeoutError:
            worker.kill()
            raise _limit(stage, "time", source, timeout) from None
        except _OverMemory:
            worker.kill()
            raise _limit(stage, "memory", source, timeout) from None
        except (EOFError, OSError):
            worker.kill()
            raise _limit(stage, "crash", source, timeout) from None
        if message[0] == "failed":
            worker.kill()
            raise _limit(stage, "memory", source, timeout)
        return message

    @contextlib.asynccontextmanager
    async def _worker(self, owner: str | None) -> AsyncIterator[_Worker]:
        """An idle worker for ``owner`` (starting one if there is room), waiting at most ``wait_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        async with self._changed:
            while self._busy[owner] >= self.per_owner or not (self._idle or len(self._all) < self.workers):
                remaining = deadline - loop.time()
                try:
                    async with asyncio.timeout(max(0.0, remaining)):
                        await self._changed.wait()
                except TimeoutError:
                    raise RateLimited("the grammar workers are busy; retry later", detail={"limit": "grammar_workers"},
                                      headers={"Retry-After": str(int(self.wait_s))}) from None
            if self._closed:
                raise RuntimeError("the grammar sandbox is closed")
            self._busy[owner] += 1
            worker = self._idle.pop() if self._idle else None
            if worker is None:
                worker = _Worker(self.memory_mb)
                self._all.add(worker)
        try:
            if not worker.alive and worker.process.pid is None:
                await worker.start()
            yield worker
        except asyncio.CancelledError:
            worker.kill()  # cut off mid-job: the answer still on its way would reach the next job
            raise
        finally:
            async with self._changed:
                self._busy[owner] -= 1
                if self._busy[owner] <= 0:
                    del self._busy[owner]
                if worker.alive and not self._closed:
                    self._idle.append(worker)
                else:
                    worker.kill()
                    self._all.discard(worker)
                self._changed.notify_all()


def _limit(stage: str, limit: str, source: str, timeout: float) -> GrammarInvalid | ParseLimit:
    """The error for a job cut off at ``stage`` ("compile" or "parse") by ``limit`` (time, memory, crash)."""
    what = {"time": f"within the time a {stage} may use ({timeout:g} s)",
            "memory": f"within the memory a {stage} may use", "crash": "(its worker crashed)"}[limit]
    if stage == "compile":
        return GrammarInvalid(f"{source}: the grammar did not compile {what}; simplify it",
                              detail={"source": source, "limit": f"compile_{limit}", "timeout_s": timeout})
    return ParseLimit(f"the code could not be parsed {what}", detail={"limit": limit, "timeout_s": timeout})


def _resident_bytes(pid: int | None) -> int | None:
    """A process's resident memory (Linux ``/proc``; None where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
