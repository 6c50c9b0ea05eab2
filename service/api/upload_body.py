"""The body of an upload route (an adapter archive, JSONL examples), read within bounds before any of it is kept.

Bodies used to be read whole into memory, before any per-tenant limit and with no bound on time: 24 uploads of
59 MB that stopped sending raised the server from 981 to 2,332 MB, still held 20 s later (docs/SECURITY.md, 19).
Here, before a byte is read, the tenant's uploads in progress are counted (429 past ``per_owner`` bodies) and
the replica's bytes in flight are reserved (429 past ``max_bytes``: the declared length, or the route's limit
when none is declared); the body then goes to a file on disk as it arrives. It must arrive within its time
bound, as every body (:mod:`service.api.body_limit`: 408 past it). Only a body that arrived whole is read
back, on an upload thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import Request

from service.errors import RateLimited

__all__ = ["UploadBodies"]


class UploadBodies:
    """Reads upload bodies: at most ``per_owner`` at once per tenant, ``max_bytes`` in flight per replica."""

    def __init__(self, *, per_owner: int, max_bytes: int, spool_dir: Path) -> None:
        self.per_owner = per_owner
        self.max_bytes = max_bytes
        self.spool_dir = spool_dir
        self._receiving: Counter[str] = Counter()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Bytes reserved by the bodies being received now."""
        return self._in_flight

    async def read(self, request: Request, *, owner: str | None, limit: int) -> bytes:
        """The whole body of ``request`` (at most ``limit`` bytes, which the body-size middleware enforces)."""
        declared = request.headers.get("content-length", "")
        reserved = min(int(declared), limit) if declared.isdigit() else limit
        async with self._reserve(owner or "", reserved):
            await asyncio.to_thread(self.spool_dir.mkdir, parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.spool_dir, prefix="upload-") as spool:
                async for chunk in request.stream():
                    spool.write(chunk)  # to the page cache: microseconds for a network-sized chunk
                spool.seek(0)
                return await asyncio.to_thread(spool.read)

    @contextlib.asynccontextmanager
    async def _reserve(self, owner: str, size: int) -> AsyncIterator[None]:
        if self._receiving[owner] >= self.per_owner:
            raise RateLimited(f"{self.per_owner} uploads of yours are arriving now; send the next when one ends",
                              detail={"limit": "uploads_receiving", "max": self.per_owner},
                              headers={"Retry-After": "5"})
        if self._in_flight + size > self.max_bytes:
            raise RateLimited("the service is receiving as many upload bytes as it holds at once; retry later",
                              detail={"limit": "upload_bytes_in_flight", "max_bytes": self.max_bytes},
                              headers={"Retry-After": "5"})
        self._receiving[owner] += 1
        self._in_flight += size
        try:
            yield
        finally:
            self._in_flight -= size
            self._receiving[owner] -= 1
            if self._receiving[owner] <= 0:
                del self._receiving[owner]
