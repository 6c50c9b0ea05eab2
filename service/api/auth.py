"""ASGI middleware: resolve the caller from its API key before anything else about the request is read.

FastAPI reads and parses a request's body before it resolves a route's dependencies, so a key checked in a
dependency would come after an anonymous client's body had been read and parsed. Here the key is checked
first (401 at once), and the caller is put in the request's state for :data:`service.api.deps.CallerDep`.
Probes, metrics, the API documentation and the playground's static files are open.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_response
from service.errors import Unauthorized
from service.security import DEVELOPER, KeyStore

__all__ = ["PUBLIC_PATHS", "AuthMiddleware"]

#: Paths anyone may call (Kubernetes probes, Prometheus, the docs, the playground page and its files).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect",
                          "/redoc", "/"})
_PUBLIC_PREFIXES = ("/playground/",)


class AuthMiddleware:
    """``keys`` None is the development mode (``NL2DSL_AUTH=off``): every caller is the developer."""

    def __init__(self, app: ASGIApp, *, keys: KeyStore | None) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in PUBLIC_PATHS or path.startswith(_PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        try:
            caller = DEVELOPER if self.keys is None else self.keys.authenticate(Headers(scope=scope))
        except Unauthorized as exc:
            await error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)
