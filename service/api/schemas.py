"""Schemas shared by several resources: the error shape and the parse-error position."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = ["ERROR_RESPONSES", "ErrorBody", "ErrorResponse", "ParseErrorModel"]


class ErrorBody(BaseModel):
    type: str = Field(description="Stable machine-readable error type, e.g. unknown_dsl.")
    message: str = Field(description="What went wrong, for a person.")
    detail: Any = Field(default=None, description="Structured detail (field errors, available names...).")


class ErrorResponse(BaseModel):
    """The one error shape of the API."""

    error: ErrorBody


class ParseErrorModel(BaseModel):
    """Where code stops parsing: 1-based line and column and what the grammar expected there."""

    message: str
    line: int | None = None
    column: int | None = None
    expected: list[str] = Field(default_factory=list)


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


#: Declared on every route so OpenAPI shows the error shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("The request cannot be served as asked."),
    404: _error("Unknown DSL or adapter."),
    409: _error("The adapter exists but cannot be served."),
    422: _error("A field is missing or out of range."),
    503: _error("The engine is not ready."),
}
