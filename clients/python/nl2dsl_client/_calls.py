"""Each API call once, as data: method, path, body and how to read the answer. Both clients send these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from nl2dsl_client._models import DSL, Adapter, GenerateResult, ValidationResult

__all__ = ["Call", "add_examples", "adapters", "delete_adapter", "delete_dsl", "dsl", "dsls", "generate",
           "publish_adapter", "upload_dsl", "validate"]

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[Any], T]
    json: Any = None
    content: bytes | None = None
    params: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _nothing(_: Any) -> None:
    return None


def generate(dsl: str, text: str, options: dict[str, Any], *, stream: bool = False) -> Call[GenerateResult]:
    body = {"dsl": dsl, "text": text, **{k: v for k, v in options.items() if v is not None}}
    if stream:
        body["stream"] = True
    return Call("POST", "/generate", GenerateResult.model_validate, json=body)


def validate(dsl: str, code: str, tenant: str | None) -> Call[ValidationResult]:
    body = {"dsl": dsl, "code": code, **({"tenant": tenant} if tenant else {})}
    return Call("POST", "/validate", ValidationResult.model_validate, json=body)


def dsls() -> Call[list[DSL]]:
    return Call("GET", "/dsls", lambda items: [DSL.model_validate(item) for item in items])


def dsl(name: str) -> Call[DSL]:
    return Call("GET", f"/dsls/{name}", DSL.model_validate)


def upload_dsl(name: str, grammar: str, fields: dict[str, Any]) -> Call[DSL]:
    return Call("POST", "/dsls", DSL.model_validate, json={"name": name, "grammar": grammar, **fields})


def add_examples(name: str, jsonl: str) -> Call[dict[str, Any]]:
    return Call("POST", f"/dsls/{name}/examples", dict, content=jsonl.encode(),
                headers={"Content-Type": "text/plain"})


def delete_dsl(name: str) -> Call[None]:
    return Call("DELETE", f"/dsls/{name}", _nothing)


def adapters() -> Call[list[Adapter]]:
    return Call("GET", "/adapters", lambda items: [Adapter.model_validate(item) for item in items])


def publish_adapter(archive: bytes, name: str | None) -> Call[Adapter]:
    return Call("POST", "/adapters", Adapter.model_validate, content=archive, params={"name": name} if name else None,
                headers={"Content-Type": "application/octet-stream"})


def delete_adapter(name: str) -> Call[None]:
    return Call("DELETE", f"/adapters/{name}", _nothing)
