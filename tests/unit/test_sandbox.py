"""The grammar sandbox's pipe to its workers, on the event loop the server runs (uvicorn picks uvloop)."""

from __future__ import annotations

import asyncio
import os
import signal

import uvloop

from service.grammars.bounds import DecodingLimits
from service.grammars.sandbox import GrammarSandbox

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
