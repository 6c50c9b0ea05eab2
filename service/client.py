"""Typed HTTP client for product backends (and for nl2dsl's own eval and bench): sync and async.

    with NL2DSLClient("http://127.0.0.1:8000") as client:
        result = client.generate(dsl="flow", text="when a form is submitted, post the answers to #sales")
        print(result.code, result.valid)

Non-2xx answers raise :class:`APIError` carrying the service's ``error.type``, message and detail.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from service.api.generate.schemas import GenerateResponse

__all__ = ["APIError", "AsyncNL2DSLClient", "NL2DSLClient"]


class APIError(Exception):
    """The service answered with an error: ``status``, ``type`` (e.g. ``unknown_dsl``), ``message``, ``detail``."""

    def __init__(self, status: int, type_: str, message: str, detail: Any = None) -> None:
        super().__init__(f"{status} {type_}: {message}")
        self.status, self.type, self.message, self.detail = status, type_, message, detail


def _check(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        error = {"type": "http_error", "message": response.text[:200]}
    raise APIError(response.status_code, error.get("type", "http_error"), error.get("message", ""), error.get("detail"))


def _headers(api_key: str | None, headers: dict[str, str] | None) -> dict[str, str]:
    """``Authorization: Bearer <api_key>`` plus any other headers."""
    return {**({"Authorization": f"Bearer {api_key}"} if api_key else {}), **(headers or {})}


def _generate_body(dsl: str, text: str, options: dict[str, Any]) -> dict[str, Any]:
    return {"dsl": dsl, "text": text, **{k: v for k, v in options.items() if v is not None}}


class NL2DSLClient:
    """Blocking client; options of ``generate`` are those of ``POST /generate``, keyword-only."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float = 120.0, headers: dict[str, str] | None = None) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=_headers(api_key, headers))

    def generate(self, *, dsl: str, text: str, **options: Any) -> GenerateResponse:
        response = self._http.post("/generate", json=_generate_body(dsl, text, options))
        return GenerateResponse.model_validate(_check(response))

    def validate(self, *, dsl: str, code: str) -> dict[str, Any]:
        return _check(self._http.post("/validate", json={"dsl": dsl, "code": code}))

    def dsls(self) -> list[dict[str, Any]]:
        return _check(self._http.get("/dsls"))

    def adapters(self) -> list[dict[str, Any]]:
        return _check(self._http.get("/adapters"))

    def dsl(self, name: str) -> dict[str, Any]:
        return _check(self._http.get(f"/dsls/{name}"))

    def upload_dsl(self, *, name: str, grammar: str, **fields: Any) -> dict[str, Any]:
        """``POST /dsls``: publish the next version of a grammar (``start``, ``description``, ``examples``...)."""
        return _check(self._http.post("/dsls", json={"name": name, "grammar": grammar, **fields}))

    def add_examples(self, name: str, jsonl: str) -> dict[str, Any]:
        """``POST /dsls/{name}/examples``: JSONL pairs, each checked against the grammar."""
        return _check(self._http.post(f"/dsls/{name}/examples", content=jsonl.encode(),
                                      headers={"Content-Type": "text/plain"}))

    def publish_adapter(self, archive: bytes, *, name: str | None = None) -> dict[str, Any]:
        """``POST /adapters``: a PEFT folder as .tar.gz (``name`` overrides its manifest's)."""
        return _check(self._http.post("/adapters", content=archive, params={"name": name} if name else None,
                                      headers={"Content-Type": "application/octet-stream"}))

    def delete_adapter(self, name: str) -> None:
        response = self._http.delete(f"/adapters/{name}")
        if response.status_code != 204:
            _check(response)

    def health(self) -> dict[str, Any]:
        """``/healthz``: the served model's name and the engine's state."""
        return self._http.get("/healthz").json()

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, *, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"service at {self._http.base_url} not ready after {timeout:.0f} s")
            time.sleep(1.0)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> NL2DSLClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncNL2DSLClient:
    """The same, for asyncio code."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float = 120.0, headers: dict[str, str] | None = None) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=_headers(api_key, headers))

    async def generate(self, *, dsl: str, text: str, **options: Any) -> GenerateResponse:
        response = await self._http.post("/generate", json=_generate_body(dsl, text, options))
        return GenerateResponse.model_validate(_check(response))

    async def validate(self, *, dsl: str, code: str) -> dict[str, Any]:
        return _check(await self._http.post("/validate", json={"dsl": dsl, "code": code}))

    async def adapters(self) -> list[dict[str, Any]]:
        return _check(await self._http.get("/adapters"))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncNL2DSLClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
