"""ASGI middleware: count every generate request (``POST /generate`` and its OpenAI twins) by HTTP status,
whichever layer answered it.

Validation errors (422) are answered before the handler runs and refusals (4xx) before the engine is
asked, so counting in the handler would miss them. The handler labels the request with its DSL and
adapter through ``label_request`` once it knows them; a client that leaves before the answer counts as 499.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics

__all__ = ["GENERATE_PATHS", "GenerateMetricsMiddleware", "label_request"]

_LABELS = "nl2dsl_metric_labels"
_CLIENT_GONE = "499"


def label_request(request: Request, *, dsl: str, adapter: str) -> None:
    """Record the bounded labels (registry names, never raw input) this request is counted under."""
    setattr(request.state, _LABELS, (dsl, adapter))


#: The routes that generate: nl2dsl's own and the OpenAI-compatible ones.
GENERATE_PATHS = frozenset({"/generate", "/v1/completions", "/v1/chat/completions"})


class GenerateMetricsMiddleware:
    def __init__(self, app: ASGIApp, paths: frozenset[str] = GENERATE_PATHS) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        status = _CLIENT_GONE

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except (asyncio.CancelledError, OSError):
            status = _CLIENT_GONE
            raise
        finally:
            dsl, adapter = scope["state"].get(_LABELS, ("unknown", "unknown"))
            metrics.REQUESTS.labels(dsl, adapter, status).inc()
