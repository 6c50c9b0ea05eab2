"""Every error the client raises, rooted in one class:

    NL2DSLError                       base
    ├── APIError                      the service answered with an error (``status``, ``type``, ``message``, ``detail``)
    │   ├── BadRequestError           400: cannot be served as asked (a grammar that does not compile, a safety block)
    │   ├── AuthenticationError       401: no API key, or an unknown one
    │   ├── PermissionDeniedError     403: the key may not do this
    │   ├── NotFoundError             404: no such DSL or adapter for this key
    │   ├── ConflictError             409: the adapter exists but cannot be served
    │   ├── UnprocessableEntityError  422: a field is missing or out of range
    │   ├── RateLimitError            429: the service or the tenant's share is full (retried first)
    │   ├── ServiceUnavailableError   503: the engine is not ready (retried first)
    │   └── GenerationTimeoutError    504: generation took longer than the request timeout
    ├── APIConnectionError            the service could not be reached (retried first)
    └── APITimeoutError               no answer within the client's timeout
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["APIConnectionError", "APIError", "APITimeoutError", "AuthenticationError", "BadRequestError",
           "ConflictError", "GenerationTimeoutError", "NL2DSLError", "NotFoundError", "PermissionDeniedError",
           "RateLimitError", "ServiceUnavailableError", "UnprocessableEntityError"]


class NL2DSLError(Exception):
    """Base of every error of this client."""


class APIError(NL2DSLError):
    """The service answered ``status`` with its error shape: a stable ``type`` (e.g. ``unknown_dsl``), a
    ``message`` for a person, structured ``detail``; ``retry_after`` in seconds where the service said."""

    def __init__(self, status: int, type_: str, message: str, detail: Any = None, *,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {type_}: {message}")
        self.status, self.type, self.message, self.detail = status, type_, message, detail
        self.retry_after = retry_after


class BadRequestError(APIError): ...
class AuthenticationError(APIError): ...
class PermissionDeniedError(APIError): ...
class NotFoundError(APIError): ...
class ConflictError(APIError): ...
class UnprocessableEntityError(APIError): ...
class RateLimitError(APIError): ...
class ServiceUnavailableError(APIError): ...
class GenerationTimeoutError(APIError): ...


class APIConnectionError(NL2DSLError):
    """The service could not be reached (refused, reset, name not found)."""


class APITimeoutError(NL2DSLError):
    """The service did not answer within the client's timeout."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
    409: ConflictError, 422: UnprocessableEntityError, 429: RateLimitError, 503: ServiceUnavailableError,
    504: GenerationTimeoutError,
}


def api_error(status: int, body: Any, *, retry_after: float | None = None) -> APIError:
    """The exception for an error answer: ``body`` is the service's ``{"error": {...}}`` (or anything else)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"type": "http_error", "message": str(body)[:200]}
    cls = _BY_STATUS.get(status, APIError)
    return cls(status, str(error.get("type", "http_error")), str(error.get("message", "")), error.get("detail"),
               retry_after=retry_after)


def error_of(response: httpx.Response, *, retry_after: float | None = None) -> APIError:
    """The exception for an error ``response`` whose body has been read."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return api_error(response.status_code, body, retry_after=retry_after)
