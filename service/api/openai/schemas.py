"""The OpenAI protocol as nl2dsl speaks it: request bodies, answers, stream chunks and the model list.

``model`` names a DSL (``flow``) or a DSL and an adapter (``flow:contoso``, ``sql:base`` for no adapter). Fields
OpenAI clients send that change nothing here (``user``, zero penalties, ``top_p: 1``) are accepted; fields that
would change the answer and that nl2dsl does not do (``stop``, ``logprobs``...) are refused with 422 rather than
ignored. ``n`` is ``/generate``'s ``candidates``: n constrained samples, ``choices[0]`` the one whose meaning most
share, then the others (not with ``stream``). nl2dsl's own options ride along as extra fields (``extra_body`` in the
OpenAI SDK): ``tenant``, ``examples``, ``constrained``, ``context``, ``timeout_s``; a one-off grammar comes as
vLLM's ``guided_grammar`` or ``structured_outputs: {"grammar": ...}``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.api.generate.schemas import Candidate, GenerateResponse, Timings
from service.api.schemas import ParseErrorModel
from service.names import NAME_PATTERN, split_client_name

__all__ = ["ChatCompletion", "ChatCompletionRequest", "ChatMessage", "Completion", "CompletionRequest", "ModelCard",
           "ModelList", "Nl2dslExtra", "OpenAIRequest", "Usage", "usage_of"]

_NAME = NAME_PATTERN
_MODEL = rf"{NAME_PATTERN[:-1]}(:{NAME_PATTERN[1:-1]})?$"


class StreamOptions(BaseModel):
    include_usage: bool = False


class StructuredOutputs(BaseModel):
    """vLLM's ``structured_outputs``: nl2dsl takes its ``grammar`` (Lark)."""

    model_config = ConfigDict(extra="forbid")

    grammar: str | None = None


class OpenAIRequest(BaseModel):
    """What completions and chat completions share."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(pattern=_MODEL, description='A DSL ("flow") or a DSL and an adapter ("flow:contoso", '
                       '"flow:base" for none); GET /v1/models lists them.')
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, description="Chat's newer name of max_tokens.")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="Default 0: greedy.")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, strict=True, description="Candidates (as /generate's candidates): choices[0] "
                   "is the one whose meaning most share. Not with stream.")
    # Accepted only where they change nothing: no penalties, the whole distribution.
    top_p: Literal[1] | None = None
    presence_penalty: Literal[0] | None = None
    frequency_penalty: Literal[0] | None = None
    user: str | None = Field(default=None, max_length=256, description="Accepted and ignored (tenancy is the key's).")
    # vLLM's fields for a one-off grammar.
    guided_grammar: str | None = None
    structured_outputs: StructuredOutputs | None = None
    # nl2dsl's own options (as POST /generate).
    tenant: str | None = Field(default=None, pattern=_NAME, description="An admin acting for this tenant.")
    examples: int | None = Field(default=None, ge=0)
    constrained: bool = True
    context: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_grammar(self) -> OpenAIRequest:
        if self.guided_grammar is not None and self.structured_outputs and self.structured_outputs.grammar:
            raise ValueError("send the grammar once: guided_grammar or structured_outputs.grammar")
        return self

    @property
    def grammar(self) -> str | None:
        return self.guided_grammar or (self.structured_outputs.grammar if self.structured_outputs else None)

    @property
    def dsl_and_adapter(self) -> tuple[str, str | None]:
        return split_client_name(self.model)


class CompletionRequest(OpenAIRequest):
    """``POST /v1/completions``: ``prompt`` is the request in natural language."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"model": "flow", "prompt": "when a form is submitted, post the answers to #sales"}]})

    prompt: str | list[str] = Field(description="The request text (a list of one string is accepted).")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("one prompt per request")
        return prompt

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(OpenAIRequest):
    """``POST /v1/chat/completions``: the last user message is the request text."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"model": "flow", "messages": [
        {"role": "user", "content": "when a form is submitted, post the answers to #sales"}]}]})

    messages: list[ChatMessage] = Field(min_length=1)

    @field_validator("messages")
    @classmethod
    def _a_user_message(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.role == "user" for m in messages):
            raise ValueError("no user message: the last one is the request")
        return messages

    @property
    def text(self) -> str:
        return next(m for m in reversed(self.messages) if m.role == "user").text


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


class Nl2dslExtra(BaseModel):
    """What OpenAI's shape has no field for: whether the code parses, where not, how confident the answer is,
    each choice's votes, and nl2dsl's ids and timings."""

    valid: bool
    error: ParseErrorModel | None = None
    confidence: float
    calibrated: bool = False
    #: With ``n``: each choice's votes (candidates sharing its meaning), in the order of ``choices``.
    votes: list[int] | None = None
    dsl: str
    adapter: str
    request_id: str
    timings: Timings

    @classmethod
    def of(cls, result: GenerateResponse) -> Nl2dslExtra:
        votes = [c.votes for c in choices_of(result)[1]] if result.candidates else None
        return cls(valid=result.valid, error=result.error, confidence=result.confidence,
                   calibrated=result.calibrated, votes=votes, dsl=result.dsl, adapter=result.adapter,
                   request_id=result.request_id, timings=result.timings)


def choices_of(result: GenerateResponse) -> tuple[list[str], list[Candidate]]:
    """The codes of an answer's choices, the answer first, and their candidates (none without ``n``)."""
    if not result.candidates:
        return [result.code], []
    first = next(i for i, c in enumerate(result.candidates) if c.code == result.code)
    ordered = [result.candidates[first], *(c for i, c in enumerate(result.candidates) if i != first)]
    return [c.code for c in ordered], ordered


class CompletionChoice(BaseModel):
    index: int = 0
    #: The DSL code.
    text: str
    finish_reason: str | None
    logprobs: None = None


class _Answer(BaseModel):
    id: str
    created: int
    model: str
    usage: Usage
    nl2dsl: Nl2dslExtra


class Completion(_Answer):
    """``POST /v1/completions``'s answer (``text_completion``)."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    #: The DSL code.
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(_Answer):
    """``POST /v1/chat/completions``'s answer (``chat.completion``)."""

    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = Field(description='The tenant the DSL or adapter belongs to, or "shared".')
    #: For "dsl:adapter": the DSL it generates (vLLM names a LoRA's base model here).
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def usage_of(result: GenerateResponse) -> Usage:
    prompt, completion = result.usage.prompt_tokens, result.usage.completion_tokens
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=result.usage.cached_tokens))
