"""What the service answers, as typed objects. Unknown fields are kept, so a newer service does not break an
older client."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["Adapter", "DSL", "Candidate", "GenerateResult", "ParseError", "Timings", "Usage", "ValidationResult"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class ParseError(_Model):
    """Where code stops parsing (1-based line and column) and what the grammar expected there."""

    message: str
    line: int | None = None
    column: int | None = None
    expected: list[str] = []


class Usage(_Model):
    prompt_tokens: int
    completion_tokens: int
    #: Prompt tokens read from the tenant's own prefix cache.
    cached_tokens: int = 0


class Timings(_Model):
    """Seconds: waiting in the engine queue, until the first token, and in all."""

    queue: float | None = None
    ttft: float | None = None
    total: float


class Candidate(_Model):
    """One of a ``candidates`` request's samples, with how many candidates share its meaning."""

    code: str
    valid: bool
    votes: int
    mean_logprob: float
    finish_reason: str


class GenerateResult(_Model):
    """The answer of ``POST /generate``: ``code`` and whether it parses (``valid``; ``error`` says where not),
    how likely it is right (``confidence``, calibrated for the adapter when ``calibrated``) and, when asked
    (``return_candidates``), every candidate."""

    request_id: str
    code: str
    valid: bool
    dsl: str
    adapter: str
    finish_reason: str
    error: ParseError | None = None
    usage: Usage
    timings: Timings
    confidence: float = 0.0
    calibrated: bool = False
    candidates: list[Candidate] | None = None


class ValidationResult(_Model):
    valid: bool
    dsl: str
    error: ParseError | None = None
    tree: str | None = None


class DSL(_Model):
    """A DSL the service generates: its grammar, description, first examples; ``version`` for uploads."""

    name: str
    description: str = ""
    grammar: str = ""
    start: str = "start"
    examples: list[dict[str, Any]] = []
    origin: str = "shipped"
    tenant: str | None = None
    version: int | None = None


class Adapter(_Model):
    """A LoRA adapter the key may use: the DSL it generates, its tenants, and whether it can be served."""

    name: str
    dsl: str | None = None
    tenants: list[str] = []
    available: bool = True
    error: str | None = None
    version: int | None = None
