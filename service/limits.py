"""Admission: a bounded queue for generate requests, a cap per tenant, and fair shares of the engine.

The engine schedules and batches by itself; what the service bounds is how many generate requests are
outstanding (running or waiting in the engine) — ``max_queue`` — and how many one tenant has at once —
``tenant_max_concurrency``. Beyond either, a request is refused at once with 429 and a ``Retry-After``
estimated from recent request durations, instead of piling up until every client times out.

Admission is the first step of a request after its key: a refused request has cost nothing (no safety
rules, no retrieval, no tokenizing). Whoever takes a ticket releases it on every path (``release`` is
idempotent); the generate router hands a streamed response the duty to release it when the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from itertools import count

from service.errors import GenerationTimeout, RateLimited

__all__ = ["Admission", "FairShare", "Ticket"]


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
    def __init__(self, *, max_queue: int, per_tenant: int, engine_slots: int = 0) -> None:
        self.max_queue = max_queue
        self.per_tenant = per_tenant
        self._tickets: dict[int, Ticket] = {}
        self._by_tenant: Counter[str] = Counter()
        #: The engine's slots, shared fairly between the tenants with requests admitted here.
        self.fair_share = FairShare(slots=engine_slots, admitted=self._by_tenant)
        self._numbers = count()
        self._typical_s = 5.0  # moving average of request durations, for Retry-After

    @property
    def outstanding(self) -> int:
        return len(self._tickets)

    def others_outstanding(self, tenant: str | None) -> int:
        """Generate requests admitted now of tenants other than ``tenant`` (safe to read from another thread)."""
        return len(self._tickets) - self._by_tenant.get(tenant or "-", 0)

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
        self.fair_share.done(ticket.tenant)
        self._typical_s = 0.9 * self._typical_s + 0.1 * (time.monotonic() - ticket.started)

    def _retry_after(self) -> str:
        return str(min(60, max(1, math.ceil(self._typical_s))))


class FairShare:
    """Fair shares of the engine between tenants: while more than one tenant is active (a request admitted now or
    within the last ``window_s``), each has at most ``slots // active tenants`` (at least 1) generations in the
    engine; a tenant alone is held only by its concurrency cap.

    A tenant below its share enters at once, even past ``slots`` (by at most one request per other tenant);
    one at or above it waits, and each generation that ends lets in the waiting tenant with the fewest in the
    engine. So a tenant that holds its whole concurrency shrinks to its share as its generations end, while
    another tenant's request runs beside them at once rather than behind them: one tenant holding 16 requests
    made another's ``/generate`` take 24.3 s, against 1-7 s around it (docs/SECURITY.md, 18). vLLM's batch
    grows with every sequence in it, so its size is what each tenant's latency depends on. A tenant stays active
    for ``window_s`` after its last request: counted only while it had one, the share was given back in every
    gap between its requests and the other tenant filled the batch again. ``slots`` 0: off.
    """

    def __init__(self, *, slots: int, admitted: Counter[str], window_s: float = 30.0) -> None:
        self.slots = slots
        self.window_s = window_s
        self._admitted = admitted  # requests admitted by tenant (running, waiting or before): the Admission's
        self._running: Counter[str] = Counter()
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}
        self._seen: dict[str, float] = {}  # when each tenant's last request ended

    def done(self, tenant: str | None) -> None:
        """A request of ``tenant`` ended, however it ended: the tenant stays active for ``window_s``."""
        self._seen[tenant or "-"] = time.monotonic()
        self._wake()

    def active(self) -> int:
        """Tenants with a request admitted now or within ``window_s``."""
        horizon = time.monotonic() - self.window_s
        for key in [k for k, when in self._seen.items() if when < horizon]:
            del self._seen[key]
        return len(self._admitted.keys() | self._seen.keys())

    def share(self) -> float:
        """Generations one tenant may have in the engine now (infinite for a tenant alone)."""
        active = self.active()
        return math.inf if active <= 1 else max(1, self.slots // active)

    @contextlib.asynccontextmanager
    async def slot(self, tenant: str | None, *, deadline: float | None = None) -> AsyncIterator[None]:
        """Held while a generation of ``tenant`` is in the engine; waits for a slot while over its share, until
        ``deadline`` (``time.monotonic()`` seconds; GenerationTimeout past it)."""
        key = tenant or "-"
        if self.slots and self._running[key] >= self.share():
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(key, []).append(waiter)
            try:
                async with asyncio.timeout(None if deadline is None else max(0.0, deadline - time.monotonic())):
                    await waiter
            except TimeoutError:
                self._cancelled(key, waiter)
                raise GenerationTimeout("the request waited for its share of the engine past its timeout") from None
            except BaseException:
                self._cancelled(key, waiter)
                raise
        else:
            self._enter(key)
        try:
            yield
        finally:
            self._leave(key)

    def _enter(self, key: str) -> None:
        self._running[key] += 1

    def _cancelled(self, key: str, waiter: asyncio.Future[None]) -> None:
        """A waiting request went away: out of the line, and its turn passed on if it had been given one."""
        if waiter.done() and not waiter.cancelled():
            self._leave(key)
        with contextlib.suppress(ValueError):
            self._waiting.get(key, []).remove(waiter)
            if not self._waiting[key]:
                del self._waiting[key]

    def _leave(self, key: str) -> None:
        self._running[key] -= 1
        if self._running[key] <= 0:
            del self._running[key]
        self._wake()

    def _wake(self) -> None:
        """Let in waiting requests of tenants below their share, the tenant with the fewest in the engine first."""
        share = self.share()
        while True:
            ready = [key for key, waiters in self._waiting.items() if waiters and self._running[key] < share]
            if not ready:
                break
            key = min(ready, key=lambda k: self._running[k])
            waiter = self._waiting[key].pop(0)
            if not self._waiting[key]:
                del self._waiting[key]
            if not waiter.done():
                self._enter(key)  # on the waiter's behalf: it goes on when it next runs
                waiter.set_result(None)
