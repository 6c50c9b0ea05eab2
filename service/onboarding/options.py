"""An onboarding run's options as data: what the API takes, what the child reads from its options file.

The options reach ``nl2dsl onboard`` as a JSON file (``--options``), never as flags on its command line: a
description of ``--pairs=/etc/passwd`` is a description. The command line holds only paths the server made.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from service.names import NAME_PATTERN

__all__ = ["OnboardOptions"]


class OnboardOptions(BaseModel):
    """How an onboarding run goes; every field has the CLI's meaning."""

    # Strict: `"examples": false` or `"steps": "2"` is a client's mistake, not a number to guess at.
    model_config = ConfigDict(extra="forbid", strict=True)

    start: str = Field(default="start", pattern=r"^[a-z_][a-z0-9_]{0,31}$")
    description: str = Field(default="", max_length=500)
    budget_s: float = Field(default=1800, ge=60, description="Wall-clock seconds for the whole run.")
    margin: float = Field(default=0.0, ge=-1, le=1,
                          description="Held-out exact match the adapter must add over the best baseline, besides a "
                                      "significant gain.")
    alpha: float = Field(default=0.05, gt=0, le=1,
                         description="Significance level of the gate (exact McNemar on the held-out pairs); 1 asks "
                                     "for no significance.")
    examples: int = Field(default=3, ge=0, le=8)
    heldout: int = Field(default=100, ge=4, le=500)
    max_tokens: int = Field(default=64, ge=1, le=512)
    steps: int | None = Field(default=None, ge=1, le=5000, description="Fixed steps instead of the budget's.")
    tenant: str | None = Field(default=None, pattern=NAME_PATTERN, description="An admin's run for this tenant.")
