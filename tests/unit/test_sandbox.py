"""The grammar sandbox's pipe to its workers, on the event loop the server runs (uvicorn picks uvloop)."""

from __future__ import annotations

import asyncio
import os
import random
import signal

import uvloop

from service.grammars.bounds import DecodingLimits
from service.grammars.sandbox import GrammarSandbox, _Worker

KV = 'start: pair ("\\n" pair)*\npair: KEY "=" VALUE\nKEY: /[a-z]+/\nVALUE: /[a-z0-9]+/\n'


def test_a_job_larger_than_the_pipe_reaches_a_worker_slow_to_read_it():
    """Registering a team's 2,000 examples sends them to a worker in one job: once the loop has watched the pipe
    (which leaves it non-blocking), a job larger than the pipe holds, sent while the worker is slow to read, once
    failed half-way with BlockingIOError (a 500 on POST /dsls/{name}/examples)."""
    # 2 MB (distinct strings: pickle would send one copy of a repeated one); "!..." fails at its first character.
    codes = ["!" * 50_000 + str(i) for i in range(40)] + ["port=80"]

    async def main():
        sandbox = GrammarSandbox(workers=1, compile_timeout_s=30)
        try:
            compile_ = dict(start="start", source="kv.lark", limits=DecodingLimits(), owner="contoso")
            await sandbox.compile(KV, codes=["a=1"], **compile_)  # the worker's pipe has been watched
            [worker] = sandbox._idle
            os.kill(worker.process.pid, signal.SIGSTOP)  # busy elsewhere: it reads nothing for a second
            asyncio.get_running_loop().call_later(1.0, os.kill, worker.process.pid, signal.SIGCONT)
            return await sandbox.compile(KV, codes=codes, **compile_)
        finally:
            await sandbox.close()

    compiled = uvloop.run(main())
    assert [r.valid for r in compiled.results] == [False] * 40 + [True]
    assert compiled.results[0].error.column == 1


def test_a_cancelled_compile_ends_cancelled_and_the_next_one_gets_its_own_answer():
    """A replica shutting down cancels the store follower mid-install, a client that leaves cancels its upload.
    Python 3.11's ``asyncio.wait_for`` returned the worker's answer instead when the cancellation met it, and the
    follower ran on: shutdown waited for it forever (most likely how a CI run hung at exit). A worker cut off mid-job
    went back to the pool with its answer still on the way, for the next job to read as its own."""
    pace = random.Random(0)

    async def main():
        sandbox = GrammarSandbox(workers=1)
        compile_ = dict(start="start", source="kv.lark", limits=DecodingLimits(), owner="contoso")
        try:
            outcomes = []
            for _ in range(8):
                await sandbox.compile(KV, **compile_)  # a worker is up (the last one was stopped with its job)
                task = asyncio.create_task(sandbox.compile(KV, codes=["!"] * 2000, **compile_))  # ~0.3 s of answers
                await asyncio.sleep(pace.uniform(0, 0.05))
                if task.cancel():
                    done, _ = await asyncio.wait([task], timeout=30)
                    outcomes.append("cancelled" if task in done and task.cancelled() else "ran on")
            after = await sandbox.compile(KV, codes=["a=1", "b=2"], **compile_)
            return outcomes, [r.valid for r in after.results]
        finally:
            await sandbox.close()

    outcomes, after = uvloop.run(main())
    assert outcomes and set(outcomes) == {"cancelled"}, outcomes
    assert after == [True, True]


def test_a_stopped_worker_keeps_its_pipe_until_the_thread_reading_it_returns():
    """A cancelled job leaves its thread in the pipe's ``recv``. Closing the pipe under it freed the descriptor's
    number for the next worker's pipe, and the old thread read the new worker's "ready" (the next compile then
    failed with EOFError: 1 CI run in 2, 3 local runs of the test above in 30)."""

    async def main():
        worker = _Worker(memory_mb=256)
        await worker.start()
        reading = asyncio.create_task(asyncio.to_thread(worker._beside, worker.conn.recv))
        while not worker._in_use:  # the thread is in recv, waiting for a message that will not come
            await asyncio.sleep(0.01)
        worker.kill()
        open_while_read = not worker.conn.closed
        [read] = await asyncio.wait_for(asyncio.gather(reading, return_exceptions=True), 30)
        return open_while_read, read, worker.conn.closed, worker.alive

    open_while_read, read, closed_after, alive = uvloop.run(main())
    assert open_while_read and isinstance(read, EOFError)  # the thread got the stopped worker's end of file ...
    assert closed_after and not alive  # ... and then the pipe was closed
