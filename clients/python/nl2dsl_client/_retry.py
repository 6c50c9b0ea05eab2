"""When to ask again, and how long to wait: the one retry policy of both clients.

Retried: 429 (the queue or the tenant's share is full) and 503 (the engine is not ready), which the service
answers before doing any work, and connections that could not be made. Never retried: anything else (a
timeout may mean the service is still working). The wait is the answer's ``Retry-After`` (seconds or an HTTP
date) when it gives one, else an exponential back-off with jitter; a wait longer than ``max_wait_s`` is not
waited: the error is raised at once, with ``retry_after`` for the caller to decide.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

__all__ = ["RETRY_STATUSES", "RetryPolicy", "retry_after"]

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """``max_retries`` more tries after the first; back-off ``base_s * 2**attempt`` (jittered) up to
    ``max_wait_s``, the longest the client waits before one retry."""

    max_retries: int = 2
    base_s: float = 0.5
    max_wait_s: float = 30.0

    def wait_s(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before retry ``attempt`` (0-based) after ``response`` (None: no connection); None:
        do not retry."""
        if attempt >= self.max_retries:
            return None
        if response is not None:
            if response.status_code not in RETRY_STATUSES:
                return None
            said = retry_after(response)
            if said is not None:
                return said if said <= self.max_wait_s else None
        backoff = self.base_s * 2**attempt
        return min(self.max_wait_s, backoff * (0.5 + random.random() / 2))


def retry_after(response: httpx.Response) -> float | None:
    """The answer's ``Retry-After`` in seconds (a number or an HTTP date), None if it has none or it is garbled."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
