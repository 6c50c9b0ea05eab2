"""Soak: moderate load held for 30 minutes: leaks, slow drift, adapter cache churn over time."""

from loadtest.shapes.stages import Stages


class Soak(Stages):
    stages = ((60, 4, 1), (1800, 4, 1))
