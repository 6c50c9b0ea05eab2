"""How a run spends its budget: every stage estimated before it starts, the smallest budget that can pass the
gate, and the slack a run may end past its budget.

Training gets what the other stages leave. Those are estimated from rates measured on a 2-core CPU serving the
embedded model (docs/ONBOARDING.md): a scoring request costs about 0.1 s plus 6.5 ms per output token at 16
requests at a time, so the baseline's cost follows from its requests and their token limit. After the baseline
the plan is made again from its measured time. A service given by ``--url`` (a GPU, say) is faster: there the
estimate is an upper bound, and a short budget is only refused once the baseline has been measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["FAST_STEP_S", "MIN_TRAINING_S", "Plan", "slack_s"]

#: The least time training gets: loading the model and a few steps on a 2-core CPU.
MIN_TRAINING_S = 120.0
#: Starting a local service on the embedded model (80 s measured on a first start, 40-60 s after).
LOCAL_START_S = 80.0
#: Registering the DSL and its examples, and each publish of the adapter (packed, checked, loaded once).
REGISTER_S = 10.0
PUBLISH_S = 15.0
_REQUEST_S = 0.1
_TOKEN_S = 0.0065
#: The fastest training step measured on a 2-core CPU (batch 8: NL2Bash 2.0 s in float32 with rows grouped by
#: length and no examples in its prompts; sql 3.1 s, cron and logq 4.3 s, flow 6.2 s with examples in half): a
#: budget that cannot reach the steps the gate asks for even at this rate is refused.
FAST_STEP_S = 2.0
#: What training spends besides its steps: loading the model and measuring what examples carry (about 30 s),
#: and held-out checks, at most a sixth of the stepping time (service/training/trainer.py). A 10-minute NL2Bash
#: run planned 216 s for 100 steps at 2 s and trained 71 in its 219 s.
TRAINING_SETUP_S = 30.0
CHECK_SHARE = 1 / 6


def slack_s(budget_s: float) -> float:
    """How far past its budget a run may end: the evaluation's estimate can be wrong by this much."""
    return max(60.0, 0.1 * budget_s)


def scoring_s(requests: int, tokens: float) -> float:
    """Estimated seconds to score ``requests`` whose outputs run to about ``tokens`` tokens (2-core CPU)."""
    return requests * (_REQUEST_S + _TOKEN_S * tokens)


@dataclass
class Plan:
    """Seconds per stage: spent ones measured, later ones estimated; training gets what is left."""

    budget_s: float
    spent: dict[str, float] = field(default_factory=dict)
    estimates: dict[str, float] = field(default_factory=dict)
    #: The steps the gate asks for before it judges an adapter, and the least training time they take.
    gate_steps: int = 0
    step_s: float = 0.0

    @classmethod
    def before_start(cls, budget_s: float, *, spent_s: float, local: bool, heldout: int, max_tokens: int,
                     code_tokens: float, gate_steps: int = 0, step_s: float = FAST_STEP_S) -> Plan:
        """The plan once the dataset is checked: the baseline (two configurations of ``heldout`` requests
        each, often running to ``max_tokens``) and the adapter's evaluation (outputs about as long as the
        codes) estimated from a 2-core CPU's rates; ``gate_steps`` at ``step_s`` each at least."""
        return cls(budget_s, {"dataset": spent_s},
                   {**({"service start": LOCAL_START_S} if local else {}), "register": REGISTER_S,
                    "baseline": scoring_s(2 * heldout, max_tokens),
                    "evaluate": scoring_s(2 * heldout, code_tokens + 2), "publish": 2 * PUBLISH_S},
                   gate_steps, step_s)

    @classmethod
    def after_baseline(cls, budget_s: float, *, spent_s: float, baseline_s: float, shorter: float,
                       gate_steps: int = 0, step_s: float = FAST_STEP_S) -> Plan:
        """The plan with the baseline measured: the adapter's two constrained configurations cost about what the
        baseline's two did, times how much shorter its outputs are (``shorter``, at least a half)."""
        return cls(budget_s, {"so far": spent_s},
                   {"evaluate": 1.1 * baseline_s * max(0.5, shorter), "publish": 2 * PUBLISH_S}, gate_steps, step_s)

    @property
    def needed_training_s(self) -> float:
        return max(MIN_TRAINING_S, self._gate_training_s)

    @property
    def _gate_training_s(self) -> float:
        """The gate's steps, their held-out checks and training's set-up."""
        return TRAINING_SETUP_S + (1 + CHECK_SHARE) * self.gate_steps * self.step_s if self.gate_steps else 0.0

    @property
    def training_s(self) -> float:
        return self.budget_s - sum(self.spent.values()) - sum(self.estimates.values())

    @property
    def minimum_budget_s(self) -> float:
        return sum(self.spent.values()) + sum(self.estimates.values()) + self.needed_training_s

    def describe(self) -> str:
        parts = [f"{name} {seconds:.0f} s" for name, seconds in self.spent.items()]
        parts += [f"{name} ~{seconds:.0f} s" for name, seconds in self.estimates.items()]
        return (f"plan for a budget of {self.budget_s:.0f} s: {', '.join(parts)}, training "
                f"{max(self.training_s, 0):.0f} s; the run ends within {slack_s(self.budget_s):.0f} s of its "
                f"budget; {self._needs()}: the smallest budget that can pass is ~"
                f"{math.ceil(self.minimum_budget_s / 60)}m")

    def _needs(self) -> str:
        if self._gate_training_s <= MIN_TRAINING_S:
            return f"training needs at least {MIN_TRAINING_S:.0f} s"
        return (f"the gate judges an adapter after {self.gate_steps} training steps, at least "
                f"{self._gate_training_s:.0f} s at {self.step_s:g} s a step with the checks and set-up")

    def too_short(self) -> str | None:
        """Why training cannot fit what is left of the budget (it would overrun it, or train too little to be
        judged); None when it fits. Says the budget that would."""
        if self.training_s >= self.needed_training_s:
            return None
        others = ", ".join(f"{name} ~{seconds:.0f} s" for name, seconds in {**self.spent, **self.estimates}.items())
        return (f"the budget of {self.budget_s:.0f} s leaves {max(self.training_s, 0):.0f} s for training after "
                f"{others}; {self._needs()}: give --budget "
                f"{math.ceil(self.minimum_budget_s / 60)}m or more; the baseline stays")
