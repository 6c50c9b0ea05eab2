"""What the simulated users ask: real held-out requests from ``data/``, per DSL and tenant.

Held-out test rows, not training rows, so the prompts look like production traffic the adapters have not
memorised. Loaded once per Locust process.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = ["Ask", "TENANTS", "asks", "random_ask"]

DATA = Path(__file__).resolve().parent.parent / "data"

#: (tenant, dsl, test file): shared flow and sql traffic, and the two tenants with private connectors.
TENANTS: tuple[tuple[str | None, str, Path], ...] = (
    (None, "flow", DATA / "flow" / "test.jsonl"),
    (None, "sql", DATA / "sql" / "test.jsonl"),
    ("contoso", "flow", DATA / "flow" / "tenants" / "contoso" / "test.jsonl"),
    ("fabrikam", "flow", DATA / "flow" / "tenants" / "fabrikam" / "test.jsonl"),
)


@dataclass(frozen=True)
class Ask:
    tenant: str | None
    dsl: str
    text: str
    context: str | None = None

    def body(self, **extra) -> dict:
        body = {"dsl": self.dsl, "text": self.text, **extra}
        if self.tenant:
            body["tenant"] = self.tenant
        if self.context:
            body["context"] = self.context
        return body


@cache
def asks(tenant: str | None, dsl: str) -> tuple[Ask, ...]:
    path = next(p for t, d, p in TENANTS if (t, d) == (tenant, dsl))
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return tuple(Ask(tenant, dsl, row["text"], row.get("context")) for row in rows)


def random_ask(rng: random.Random, *, tenant: str | None = None, dsl: str | None = None) -> Ask:
    """A random request; tenant and DSL drawn from the mix unless given."""
    choices = [(t, d) for t, d, _ in TENANTS if (tenant is None or t == tenant) and (dsl is None or d == dsl)]
    return rng.choice(asks(*rng.choice(choices)))
