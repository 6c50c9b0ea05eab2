"""The errors of nl2dsl, and the one JSON shape they take on the wire.

    NL2DSLError                      base: every error the service raises on purpose
    ├── BadRequest (400)             the request is well-formed JSON but cannot be served as asked
    │   ├── GrammarInvalid (400)     a grammar does not compile (lark or the engine says where)
    │   ├── ParseLimit (400)         code could not be parsed within the time or memory a parse may use
    │   └── SafetyBlocked (400)      the request or its output breaks the responsible-AI policy
    ├── Unauthorized (401)           no API key, or an unknown one
    ├── Forbidden (403)              the key may not do this (act as another tenant, use a DSL, administer)
    ├── NotFound (404)
    │   ├── UnknownDSL (404)         no grammar of that name
    │   └── UnknownAdapter (404)     no adapter of that name that the caller may use
    ├── Conflict (409)
    │   ├── AdapterUnavailable (409) the adapter exists but cannot be used (other base model, broken files,
    │   │                            quarantined after the engine refused it)
    │   └── OnboardingBusy (409)     an onboarding run is already going on this replica
    ├── PayloadTooLarge (413)        the body is larger than the service reads
    ├── RequestInvalid (422)         a field is out of range (also used for pydantic's validation errors)
    ├── RateLimited (429)            the queue or the tenant's concurrency is full (with Retry-After)
    │   └── QuotaExceeded (429)      a tenant's DSLs, adapters, stored bytes, publishes a minute or disk
    ├── EngineUnavailable (503)      the engine is not loaded (yet) or has died
    ├── StoreUnavailable (503)       the store cannot be read or written now (what is loaded keeps serving)
    └── GenerationTimeout (504)      generation took longer than the request timeout (and was aborted)

Every error renders as ``{"error": {"type", "message", "detail", "param", "code"}}`` with its status code:
nl2dsl's stable ``type`` and structured ``detail``, and OpenAI's ``param`` (the field at fault, if one) and
``code`` (the HTTP status, as vLLM's OpenAI server sends it), so OpenAI clients read our errors as theirs.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AdapterUnavailable",
    "BadRequest",
    "Conflict",
    "EngineUnavailable",
    "Forbidden",
    "GenerationTimeout",
    "GrammarInvalid",
    "NL2DSLError",
    "NotFound",
    "OnboardingBusy",
    "ParseLimit",
    "PayloadTooLarge",
    "QuotaExceeded",
    "RateLimited",
    "RequestInvalid",
    "SafetyBlocked",
    "StoreUnavailable",
    "Unauthorized",
    "UnknownAdapter",
    "UnknownDSL",
    "error_body",
]


class NL2DSLError(Exception):
    """Base of all nl2dsl errors; ``status_code`` and ``type`` say how it goes on the wire."""

    status_code = 500
    type = "internal_error"

    def __init__(self, message: str, *, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers


class BadRequest(NL2DSLError):
    status_code = 400
    type = "bad_request"


class GrammarInvalid(BadRequest):
    type = "grammar_invalid"


class ParseLimit(BadRequest):
    type = "parse_limit"


class SafetyBlocked(BadRequest):
    type = "safety_blocked"


class Unauthorized(NL2DSLError):
    status_code = 401
    type = "unauthorized"


class Forbidden(NL2DSLError):
    status_code = 403
    type = "forbidden"


class NotFound(NL2DSLError):
    status_code = 404
    type = "not_found"


class UnknownDSL(NotFound):
    type = "unknown_dsl"


class UnknownAdapter(NotFound):
    type = "unknown_adapter"


class Conflict(NL2DSLError):
    status_code = 409
    type = "conflict"


class AdapterUnavailable(Conflict):
    type = "adapter_unavailable"


class OnboardingBusy(Conflict):
    type = "onboarding_busy"


class PayloadTooLarge(NL2DSLError):
    status_code = 413
    type = "payload_too_large"


class RequestInvalid(NL2DSLError):
    status_code = 422
    type = "invalid_request"


class RateLimited(NL2DSLError):
    status_code = 429
    type = "rate_limited"


class QuotaExceeded(RateLimited):
    type = "quota_exceeded"


class EngineUnavailable(NL2DSLError):
    status_code = 503
    type = "engine_unavailable"


class StoreUnavailable(NL2DSLError):
    status_code = 503
    type = "store_unavailable"


class GenerationTimeout(NL2DSLError):
    status_code = 504
    type = "timeout"


def error_body(type_: str, message: str, detail: Any = None, *, status: int) -> dict[str, Any]:
    """The one error shape: ``{"error": {"type", "message", "detail", "param", "code"}}``."""
    return {"error": {"type": type_, "message": message, "detail": detail, "param": _param(detail), "code": status}}


def _param(detail: Any) -> str | None:
    """The request field an error is about: the first of a field list, or the field a detail names."""
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        return detail[0].get("field") or None
    if isinstance(detail, dict) and isinstance(detail.get("field"), str):
        return detail["field"]
    return None
