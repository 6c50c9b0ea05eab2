"""ASGI middleware: browsers on other origins may not change anything.

A web page can make a visitor's browser POST to ``http://127.0.0.1:8000`` as a form or ``text/plain``
(no CORS preflight), and in development mode (``NL2DSL_AUTH=off``) that request would be served. Browsers
say where a request comes from (``Origin``, ``Sec-Fetch-Site``): a state-changing request from another
origin gets 403. Servers and command-line clients send neither header and are not affected; the playground
is served from the same origin.
"""

from __future__ import annotations

from urllib.parse import urlparse

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_response
from service.errors import Forbidden

__all__ = ["SameOriginMiddleware"]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SameOriginMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in _SAFE_METHODS and _cross_origin(Headers(scope=scope)):
            refused = Forbidden("requests from other web origins are refused", detail={"limit": "same_origin"})
            await error_response(refused)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _cross_origin(headers: Headers) -> bool:
    if headers.get("sec-fetch-site", "") == "cross-site":
        return True
    origin = headers.get("origin")
    return origin is not None and urlparse(origin).netloc != headers.get("host", "")
