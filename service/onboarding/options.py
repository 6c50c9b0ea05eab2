"""An onboarding run's options, defined once: every default and bound of ``POST /onboarding``'s body, of
``nl2dsl onboard``'s flags (made from this model, service.cli), of the pipeline (service.onboarding.pipeline)
and of the chart's Job and the playground's form (tests/unit/test_onboarding_options.py checks those two).

From the API the options reach ``nl2dsl onboard`` as a JSON file (``--options``), never as flags on its command
line: a description of ``--pairs=/etc/passwd`` is a description. The command line holds only paths the server
made. The budget travels as seconds; only a person's flag may say ``30m`` (:func:`budget_seconds`).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from service.grammars.comparison import Comparison
from service.names import NAME_PATTERN

__all__ = ["OnboardOptions", "budget_seconds"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h)?")


class OnboardOptions(BaseModel):
    """How an onboarding run goes; every field has the CLI's meaning."""

    # Strict: `"examples": false` or `"steps": "2"` is a client's mistake, not a number to guess at.
    model_config = ConfigDict(extra="forbid", strict=True)

    start: str = Field(default="start", pattern=r"^[a-z_][a-z0-9_]{0,31}$", description="The grammar's start rule.")
    description: str = Field(default="", max_length=500,
                             description="One sentence on what the DSL is for (in the prompt).")
    budget_s: float = Field(default=1800.0, ge=60, description="Wall-clock seconds for the whole run.")
    margin: float = Field(default=0.0, ge=-1, le=1,
                          description="Held-out exact match the adapter must add over the best baseline, besides a "
                                      "significant gain.")
    alpha: float = Field(default=0.05, gt=0, le=1,
                         description="Significance level of the gate (exact McNemar on the held-out pairs); 1 asks "
                                     "for no significance.")
    examples: int = Field(default=3, ge=0, le=8, description="Retrieved examples in the 'with examples' runs.")
    # 100: what every run in docs/ONBOARDING.md held out.
    heldout: int = Field(default=100, ge=4, le=500, description="At most this many held-out pairs.")
    # A cap: the run generates at most 1.5 times its longest code's tokens (service.onboarding.pipeline).
    max_tokens: int = Field(default=256, ge=1, le=512, description="Per generation in the evaluations, at most.")
    steps: int | None = Field(default=None, ge=1, le=5000, description="Fixed steps instead of the budget's.")
    tenant: str | None = Field(default=None, pattern=NAME_PATTERN,
                               description="The tenant the adapter is for and serves only (an admin may name any).")
    compare: Comparison | None = Field(default=None, description="How two programs of the DSL are compared "
                                       "(unordered rules, literals, a meaning plug-in); the gate judges on the "
                                       "strongest score it gives.")


def budget_seconds(text: str) -> float:
    """A budget as a person writes it (``900``, ``900s``, ``30m``, ``1h``) in seconds; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r}: a number of seconds, or 30m, 1h")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
