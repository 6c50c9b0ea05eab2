"""Request and response models of ``POST /generate``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.api.schemas import ParseErrorModel
from service.names import NAME_PATTERN

__all__ = ["Candidate", "GenerateRequest", "GenerateResponse", "Timings", "Usage"]

_NAME = NAME_PATTERN


class GenerateRequest(BaseModel):
    """Turn ``text`` into code of ``dsl``. Limits on lengths and tokens come from the service settings."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"dsl": "flow", "text": "when a form is submitted, post the answers to #sales"}]
        },
    )

    dsl: str = Field(pattern=_NAME, description="The DSL to generate (GET /dsls lists them).")
    text: str = Field(min_length=1, description="The request in natural language.")
    context: str | None = Field(default=None, description="Extra context, e.g. the table schema for sql.")
    tenant: str | None = Field(default=None, pattern=_NAME, description="Tenant whose adapter to use.")
    adapter: str | None = Field(
        default=None, pattern=_NAME, description='Adapter by name; "base" for the base model without adapter.'
    )
    max_tokens: int | None = Field(default=None, ge=1, description="Most tokens to generate.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 = greedy.")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    examples: int | None = Field(default=None, ge=0, description="Few-shot examples to retrieve.")
    constrained: bool = Field(default=True, description="Constrain decoding to the DSL's grammar.")
    stream: bool = Field(default=False, description="Stream text deltas as server-sent events.")
    grammar: str | None = Field(
        default=None, description="A Lark grammar for this request only (start rule `start`): decoding and the "
        "parse use it instead of the DSL's, while the DSL still chooses the prompt, examples and adapter. Compiled "
        "like an upload (POST /dsls), within the same bounds; never kept.")
    timeout_s: float | None = Field(
        default=None, gt=0, description="Seconds before generation is aborted with 504 (default and maximum: "
        "the service's request timeout).")
    candidates: int | None = Field(
        default=None, ge=1, strict=True, description="Sample this many constrained candidates in one engine batch "
        "and answer with the one whose meaning most of them share (the first is greedy unless temperature is set). "
        "Costs n generations; not with stream. Default: what the adapter's onboarding chose (1 without; a streamed "
        "request 1). At most the service's max_candidates (8).")
    return_candidates: bool = Field(default=False, strict=True, description="Also list every candidate with its votes.")


class Candidate(BaseModel):
    """One candidate of a ``candidates`` request."""

    code: str
    valid: bool
    votes: int = Field(description="Candidates that share its meaning (its canonical form), itself included.")
    mean_logprob: float = Field(description="The model's mean log-probability per token of the code.")
    finish_reason: str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = Field(default=0, description="Prompt tokens read from the prefix cache, which is the "
                               "tenant's own: no tenant's requests read or fill another's")


class Timings(BaseModel):
    """Seconds: fetching the adapter's files, waiting in the engine queue, until the first token, and in all."""

    fetch: float | None = Field(default=None, description="Seconds this request waited for its adapter's files to "
                                "come from the store: only a request that found them missing on this replica.")
    queue: float | None = None
    ttft: float | None = None
    total: float


class GenerateResponse(BaseModel):
    request_id: str
    code: str
    valid: bool = Field(description="True when the code parses with the DSL's grammar.")
    dsl: str
    adapter: str = Field(description='The adapter that generated the code, or "base".')
    finish_reason: Literal["stop", "length", "abort"] | str
    error: ParseErrorModel | None = Field(default=None, description="Where the code stops parsing, if it does.")
    usage: Usage
    timings: Timings
    confidence: float = Field(ge=0.0, le=1.0, description="How likely the code is right: the model's mean "
                              "per-token probability and the candidates' agreement, calibrated on the adapter's "
                              "held-out pairs where onboarding fitted it (calibrated says); 0 for code that "
                              "does not parse.")
    calibrated: bool = Field(default=False, description="Whether confidence is calibrated for this adapter.")
    candidates: list[Candidate] | None = Field(default=None, description="Every candidate, with return_candidates.")
