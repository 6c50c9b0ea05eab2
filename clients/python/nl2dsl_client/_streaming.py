"""``POST /generate`` with ``stream: true``: server-sent ``delta`` events, then ``result`` (or ``error``).

Iterating a stream yields the text as it comes; at the end ``result`` holds the whole answer. Leaving early
(``close()``, or the ``with`` block) closes the connection, and the service aborts the generation.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import httpx

from nl2dsl_client._exceptions import APIConnectionError, api_error
from nl2dsl_client._models import GenerateResult

__all__ = ["AsyncStream", "Stream"]


class _Events:
    """Server-sent events, a line at a time: each complete event is read as text, a result, or an error."""

    def __init__(self) -> None:
        self.event, self.data = "message", ""
        self.result: GenerateResult | None = None

    def line(self, line: str) -> str | None:
        """The text of a ``delta`` event this line completes; the final result is kept; errors raise."""
        if line.startswith("event:"):
            self.event = line[6:].strip()
        elif line.startswith("data:"):
            self.data += line[5:].strip()
        elif not line and self.data:
            event, payload = self.event, json.loads(self.data)
            self.event, self.data = "message", ""
            if event == "delta":
                return payload["text"]
            if event == "result":
                self.result = GenerateResult.model_validate(payload)
            elif event == "error":
                raise api_error(int(payload.get("error", {}).get("code") or 500), payload)
        return None

    def finished(self) -> GenerateResult:
        if self.result is None:
            raise APIConnectionError("the stream ended before its result")
        return self.result


class Stream:
    """A generation as it streams: ``for text in stream``; then ``stream.result``."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._events = _Events()

    @property
    def result(self) -> GenerateResult:
        """The whole answer, once the stream has been read to its end."""
        return self._events.finished()

    def __iter__(self) -> Iterator[str]:
        try:
            for line in self._response.iter_lines():
                if (text := self._events.line(line)) is not None:
                    yield text
        except httpx.TransportError as exc:
            raise APIConnectionError(f"the stream broke: {exc}") from exc
        finally:
            self.close()

    def close(self) -> None:
        """Leave: the connection is closed and the service aborts the generation."""
        self._response.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStream:
    """The same, for asyncio: ``async for text in stream``."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._events = _Events()

    @property
    def result(self) -> GenerateResult:
        return self._events.finished()

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            async for line in self._response.aiter_lines():
                if (text := self._events.line(line)) is not None:
                    yield text
        except httpx.TransportError as exc:
            raise APIConnectionError(f"the stream broke: {exc}") from exc
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self._response.aclose()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

