"""The threads that read what tenants upload, apart from the ones that serve generation.

Unpacking an archive, checking an adapter's files, reading JSONL examples and packing what is stored all
block. Run in the default executor they shared its few threads (6 on 2 cores) with every ``to_thread`` of the
request path: six archive bombs at once held them all for ~205 s and another tenant's ``/generate`` took
223 s. Here they get a pool of their own (``workers`` threads), and a tenant holds at most ``per_owner`` of
them at once, with at most ``waiting`` more of its jobs queued (429 past that): a tenant's uploads wait for
each other, not for everyone, and never for the request path. Each job is bounded by what it reads (the
callers' size, member and line limits); the pool bounds how many run at once.
"""

from __future__ import annotations

import asyncio
import functools
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from service.errors import RateLimited

__all__ = ["UploadPool"]

T = TypeVar("T")


class UploadPool:
    """``await pool.run(owner, fn, *args)``: ``fn(*args)`` on an upload thread, within ``owner``'s share."""

    def __init__(self, *, workers: int = 2, per_owner: int = 1, waiting: int = 4) -> None:
        self.per_owner = per_owner
        self.waiting = waiting
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nl2dsl-upload")
        self._shares: dict[str, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(per_owner))
        self._queued: dict[str, int] = defaultdict(int)

    async def run(self, owner: str | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        key = owner or ""
        if self._queued[key] >= self.per_owner + self.waiting:
            raise RateLimited("too many uploads of yours are being processed; try again when they end",
                              detail={"limit": "uploads_in_progress", "max": self.per_owner + self.waiting},
                              headers={"Retry-After": "5"})
        self._queued[key] += 1
        try:
            async with self._shares[key]:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        finally:
            self._queued[key] -= 1
            if not self._queued[key]:
                del self._queued[key]
                self._shares.pop(key, None)

    def queued(self, owner: str | None) -> int:
        """``owner``'s uploads running or waiting now."""
        return self._queued.get(owner or "", 0)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
