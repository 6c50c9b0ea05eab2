"""Admission: a bounded queue for generate requests, and a cap per tenant.

The engine schedules and batches by itself; what the service bounds is how many generate requests are
outstanding (running or waiting in the engine) — ``max_queue`` — and how many one tenant has at once —
``tenant_max_concurrency``. Beyond either, a request is refused at once with 429 and a ``Retry-After``
estimated from recent request durations, instead of piling up until every client times out.

Admission is the first step of a request after its key: a refused request has cost nothing (no safety
rules, no retrieval, no tokenizing). Whoever takes a ticket releases it on every path (``release`` is
idempotent); the generate router hands a streamed response the duty to release it when the stream ends.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count

from service.errors import RateLimited

__all__ = ["Admission", "Ticket"]


@dataclass
class Ticket:
    """One admitted request; ``release`` is idempotent."""

    admission: Admission
    number: int
    tenant: str
    started: float = field(default_factory=time.monotonic)
    released: bool = False
    #: What else the request holds until it ends (its adapter's files: service.adapters.residency).
    on_release: list[Callable[[], None]] = field(default_factory=list)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission._release(self)
            for let_go in self.on_release:
                let_go()


class Admission:
    def __init__(self, *, max_queue: int, per_tenant: int) -> None:
        self.max_queue = max_queue
        self.per_tenant = per_tenant
        self._tickets: dict[int, Ticket] = {}
        self._by_tenant: Counter[str] = Counter()
        self._numbers = count()
        self._typical_s = 5.0  # moving average of request durations, for Retry-After

    @property
    def outstanding(self) -> int:
        return len(self._tickets)

    def admit(self, tenant: str | None) -> Ticket:
        """A ticket for one request, or RateLimited (429) when the queue or the tenant's share is full."""
        key = tenant or "-"
        if len(self._tickets) >= self.max_queue:
            raise RateLimited(
                f"the service is at capacity ({self.max_queue} generate requests running or queued); retry later",
                detail={"limit": "queue", "max_queue": self.max_queue},
                headers={"Retry-After": self._retry_after()},
            )
        if self._by_tenant[key] >= self.per_tenant:
            raise RateLimited(
                f"tenant {tenant!r} has {self.per_tenant} generate requests in progress, its limit; retry later",
                detail={"limit": "tenant", "tenant_max_concurrency": self.per_tenant},
                headers={"Retry-After": self._retry_after()},
            )
        ticket = Ticket(self, next(self._numbers), key)
        self._tickets[ticket.number] = ticket
        self._by_tenant[key] += 1
        return ticket

    def _release(self, ticket: Ticket) -> None:
        if self._tickets.pop(ticket.number, None) is None:
            return
        self._by_tenant[ticket.tenant] -= 1
        if self._by_tenant[ticket.tenant] <= 0:
            del self._by_tenant[ticket.tenant]
        self._typical_s = 0.9 * self._typical_s + 0.1 * (time.monotonic() - ticket.started)

    def _retry_after(self) -> str:
        return str(min(60, max(1, math.ceil(self._typical_s))))
