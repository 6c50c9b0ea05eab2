"""ASGI middleware: refuse request bodies over their limit with 413, without reading them, or slower than their
time bound with 408.

A declared ``Content-Length`` over the limit is answered at once; a body sent without one (chunked) is
counted as it arrives and refused as soon as it passes the limit. Routes that take files (an adapter archive,
a JSONL of examples, an onboarding run's pairs) have a larger limit of their own. Every body must have
arrived ``timeout_s`` after its first read: a client that stops sending holds its connection, and what it
sent, no longer (docs/SECURITY.md, 19).
"""

from __future__ import annotations

import asyncio
import re
import time

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.errors import PayloadTooLarge

__all__ = ["BodyLimitMiddleware"]


class BodyLimitMiddleware:
    """``larger``: ``(method, path regex) -> bytes`` for routes with a limit of their own."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, larger: dict[tuple[str, str], int] | None = None,
                 timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.larger = [(method, re.compile(path), limit) for (method, path), limit in (larger or {}).items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = next((n for method, path, n in self.larger if scope["method"] == method
                      and path.fullmatch(scope["path"])), self.max_bytes)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await error_response(_too_large(limit))(scope, receive, send)
            return
        received, deadline, arrived = 0, None, False

        async def counting_receive() -> Message:
            nonlocal received, deadline, arrived
            if arrived or self.timeout_s is None:  # after the body: a disconnect may come whenever it comes
                message = await receive()
            else:
                deadline = deadline or time.monotonic() + self.timeout_s
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        message = await receive()
                except TimeoutError:  # an HTTPException, which FastAPI's body parsing lets through as it is
                    raise HTTPException(408, f"the body did not arrive within {self.timeout_s:g} s") from None
            arrived = arrived or message["type"] != "http.request" or not message.get("more_body", False)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # raised inside the route: rendered by the error handlers
                    raise HTTPException(413, _too_large(limit).message)
            return message

        await self.app(scope, counting_receive, send)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is larger than {limit} bytes", detail={"max_bytes": limit})
