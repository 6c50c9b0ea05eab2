"""The clients: :class:`NL2DSLClient` (blocking) and :class:`AsyncNL2DSLClient` (asyncio), the same methods.

    with NL2DSLClient("http://127.0.0.1:8000", api_key="...") as client:
        result = client.generate(dsl="flow", text="when a form is submitted, post the answers to #sales")
        print(result.code, result.valid)

Options are keyword-only. 429 and 503 answers and failed connections are retried (:mod:`._retry`); every
other error answer raises its :class:`~nl2dsl_client.APIError` subclass.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any, TypeVar

import httpx

from nl2dsl_client import _calls
from nl2dsl_client._calls import Call
from nl2dsl_client._exceptions import APIConnectionError, APITimeoutError, error_of
from nl2dsl_client._models import DSL, Adapter, GenerateResult, ValidationResult
from nl2dsl_client._retry import RetryPolicy, retry_after
from nl2dsl_client._streaming import AsyncStream, Stream

__all__ = ["AsyncNL2DSLClient", "NL2DSLClient"]

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"
#: Seconds for a whole answer: generation on a CPU takes tens of seconds under load.
DEFAULT_TIMEOUT_S = 120.0


def _headers(api_key: str | None, headers: dict[str, str] | None) -> dict[str, str]:
    return {**({"Authorization": f"Bearer {api_key}"} if api_key else {}), **(headers or {})}


def _request(http: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
    return http.build_request(call.method, call.path, json=call.json, content=call.content, params=call.params,
                              headers=call.headers)


def _read(call: Call[T], response: httpx.Response) -> T:
    return call.read(response.json() if response.content else None)


def _refused(policy: RetryPolicy, attempt: int, response: httpx.Response) -> float:
    """Seconds to wait before asking again after an error answer; its exception if it is not to be retried."""
    wait = policy.wait_s(attempt, response)
    if wait is None:
        raise error_of(response, retry_after=retry_after(response))
    return wait


def _unreached(policy: RetryPolicy, attempt: int, exc: httpx.TransportError, url: httpx.URL) -> float:
    """Seconds to wait before trying again after no answer; the exception if not (a timeout never is: the
    service may still be working on the request)."""
    if isinstance(exc, httpx.TimeoutException):
        raise APITimeoutError(f"no answer from {url} in time: {exc}") from exc
    wait = policy.wait_s(attempt, None)
    if wait is None:
        raise APIConnectionError(f"cannot reach {url}: {exc}") from exc
    return wait


class NL2DSLClient:
    """Blocking client of one nl2dsl service.

    ``api_key``: sent as ``Authorization: Bearer``; ``timeout``: seconds for an answer; ``max_retries``: tries
    after the first on 429, 503 and failed connections (``retry`` for the whole policy); ``transport``: an
    httpx transport (tests, proxies).
    """

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, max_retries: int = 2, retry: RetryPolicy | None = None,
                 headers: dict[str, str] | None = None, transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=_headers(api_key, headers),
                                  transport=transport)
        self._retry = retry or RetryPolicy(max_retries=max_retries)

    def generate(self, *, dsl: str, text: str, **options: Any) -> GenerateResult:
        """DSL code for ``text``; ``options`` are those of ``POST /generate`` (``adapter``, ``examples``,
        ``max_tokens``, ``constrained``, ``context``, ``tenant``, ``candidates``, ``return_candidates``...)."""
        return self._call(_calls.generate(dsl, text, options))

    def stream(self, *, dsl: str, text: str, **options: Any) -> Stream:
        """The same, streamed: ``with client.stream(...) as s: for text in s: ...``; then ``s.result``."""
        return Stream(self._send(_calls.generate(dsl, text, options, stream=True), stream=True))

    def validate(self, *, dsl: str, code: str, tenant: str | None = None) -> ValidationResult:
        """Does ``code`` parse with the DSL's grammar, and if not, where does it stop."""
        return self._call(_calls.validate(dsl, code, tenant))

    def dsls(self) -> list[DSL]:
        return self._call(_calls.dsls())

    def dsl(self, name: str) -> DSL:
        return self._call(_calls.dsl(name))

    def upload_dsl(self, *, name: str, grammar: str, **fields: Any) -> DSL:
        """Publish the next version of the caller's DSL ``name`` (``start``, ``description``, ``examples``...)."""
        return self._call(_calls.upload_dsl(name, grammar, fields))

    def add_examples(self, name: str, jsonl: str) -> dict[str, Any]:
        """Add JSONL ``{"text", "code"}`` pairs to one of the caller's DSLs, each checked against its grammar."""
        return self._call(_calls.add_examples(name, jsonl))

    def delete_dsl(self, name: str) -> None:
        """Withdraw one of the caller's DSLs (the store keeps its history)."""
        self._call(_calls.delete_dsl(name))

    def adapters(self) -> list[Adapter]:
        return self._call(_calls.adapters())

    def publish_adapter(self, archive: bytes, *, name: str | None = None) -> Adapter:
        """Publish a PEFT adapter folder packed as .tar.gz (``name`` overrides its manifest's)."""
        return self._call(_calls.publish_adapter(archive, name))

    def delete_adapter(self, name: str) -> None:
        self._call(_calls.delete_adapter(name))

    def health(self) -> dict[str, Any]:
        """``/healthz``: the served model and the engine's state (503 included: it says why)."""
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
                raise APITimeoutError(f"service at {self._http.base_url} not ready after {timeout:.0f} s")
            time.sleep(1.0)

    def _call(self, call: Call[T]) -> T:
        return _read(call, self._send(call))

    def _send(self, call: Call[Any], *, stream: bool = False) -> httpx.Response:
        for attempt in itertools.count():
            try:
                response = self._http.send(_request(self._http, call), stream=stream)
            except httpx.TransportError as exc:
                wait = _unreached(self._retry, attempt, exc, self._http.base_url)
            else:
                if response.is_success:
                    return response
                response.read()
                response.close()
                wait = _refused(self._retry, attempt, response)
            time.sleep(wait)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> NL2DSLClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncNL2DSLClient:
    """The same client for asyncio code."""

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, max_retries: int = 2, retry: RetryPolicy | None = None,
                 headers: dict[str, str] | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=_headers(api_key, headers),
                                       transport=transport)
        self._retry = retry or RetryPolicy(max_retries=max_retries)

    async def generate(self, *, dsl: str, text: str, **options: Any) -> GenerateResult:
        return await self._call(_calls.generate(dsl, text, options))

    async def stream(self, *, dsl: str, text: str, **options: Any) -> AsyncStream:
        """``async with await client.stream(...) as s: async for text in s: ...``; then ``s.result``."""
        return AsyncStream(await self._send(_calls.generate(dsl, text, options, stream=True), stream=True))

    async def validate(self, *, dsl: str, code: str, tenant: str | None = None) -> ValidationResult:
        return await self._call(_calls.validate(dsl, code, tenant))

    async def dsls(self) -> list[DSL]:
        return await self._call(_calls.dsls())

    async def dsl(self, name: str) -> DSL:
        return await self._call(_calls.dsl(name))

    async def upload_dsl(self, *, name: str, grammar: str, **fields: Any) -> DSL:
        return await self._call(_calls.upload_dsl(name, grammar, fields))

    async def add_examples(self, name: str, jsonl: str) -> dict[str, Any]:
        return await self._call(_calls.add_examples(name, jsonl))

    async def delete_dsl(self, name: str) -> None:
        await self._call(_calls.delete_dsl(name))

    async def adapters(self) -> list[Adapter]:
        return await self._call(_calls.adapters())

    async def publish_adapter(self, archive: bytes, *, name: str | None = None) -> Adapter:
        return await self._call(_calls.publish_adapter(archive, name))

    async def delete_adapter(self, name: str) -> None:
        await self._call(_calls.delete_adapter(name))

    async def _call(self, call: Call[T]) -> T:
        return _read(call, await self._send(call))

    async def _send(self, call: Call[Any], *, stream: bool = False) -> httpx.Response:
        for attempt in itertools.count():
            try:
                response = await self._http.send(_request(self._http, call), stream=stream)
            except httpx.TransportError as exc:
                wait = _unreached(self._retry, attempt, exc, self._http.base_url)
            else:
                if response.is_success:
                    return response
                await response.aread()
                await response.aclose()
                wait = _refused(self._retry, attempt, response)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncNL2DSLClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
