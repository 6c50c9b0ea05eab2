"""ASGI middleware: read form-encoded bodies as JSON.

``curl -d '{"dsl": ...}'`` sends ``application/x-www-form-urlencoded``. Every endpoint of this API takes
JSON and none takes forms, so such a body is read as the JSON it is instead of failing with a 422.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["FormAsJSONMiddleware"]

_FORM = b"application/x-www-form-urlencoded"


class FormAsJSONMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = scope["headers"]
            if any(k == b"content-type" and v.startswith(_FORM) for k, v in headers):
                scope = dict(scope)
                scope["headers"] = [(k, b"application/json" if k == b"content-type" else v) for k, v in headers]
        await self.app(scope, receive, send)
