"""Schemas shared by several resources: the error shape and the parse-error position."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.store import Version

__all__ = ["ErrorBody", "ErrorResponse", "ParseErrorModel", "Rollback", "VersionInfo", "error_responses",
           "version_info"]


class ErrorBody(BaseModel):
    type: str = Field(description="Stable machine-readable error type, e.g. unknown_dsl.")
    message: str = Field(description="What went wrong, for a person.")
    detail: Any = Field(default=None, description="Structured detail (field errors, available names...).")
    param: str | None = Field(default=None, description="The request field at fault, if one (as OpenAI's errors).")
    code: int = Field(description="The HTTP status (as vLLM's OpenAI-compatible server sends it).")


class ErrorResponse(BaseModel):
    """The one error shape of the API."""

    error: ErrorBody


class ParseErrorModel(BaseModel):
    """Where code stops parsing: 1-based line and column and what the grammar expected there."""

    message: str
    line: int | None = None
    column: int | None = None
    expected: list[str] = Field(default_factory=list)


class VersionInfo(BaseModel):
    """One version of a published DSL or adapter in the store (the highest is served)."""

    version: int
    deleted: bool = Field(description="A deletion: the item was not served from this version on.")
    bytes: int


def version_info(version: Version) -> VersionInfo:
    return VersionInfo(version=version.number, deleted=version.deleted, bytes=version.size)


class Rollback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, description="The version whose content becomes the newest version.")


#: What each status means, wherever a route can answer it.
_MEANINGS = {
    400: "The request cannot be served as asked (a grammar that does not compile, a safety block, a parse "
         "past its limits).",
    401: "No API key, or an unknown one.",
    403: "The key may not do this (act as another tenant, use this DSL, administer), or a request from another "
         "web origin.",
    404: "Unknown DSL or adapter (another tenant's are unknown too).",
    408: "The request body did not arrive within its time bound.",
    409: "The adapter exists but cannot be served.",
    413: "The body is larger than the service reads.",
    422: "A field is missing or out of range.",
    429: "The queue, the tenant's share or the grammar workers are full, or a publishing quota is used up; "
         "retry after `Retry-After` seconds where given.",
    503: "The engine is not ready, or the store cannot be reached.",
    504: "Generation took longer than the request timeout and was aborted.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that can answer ``codes``: each in the one error shape, in OpenAPI."""
    return {code: {"model": ErrorResponse, "description": _MEANINGS[code]} for code in codes}
