"""Ramp: add users step by step to find where latency bends (2 -> 12 users over 4 minutes)."""

from loadtest.shapes.stages import Stages


class Ramp(Stages):
    stages = ((60, 2, 1), (120, 4, 1), (180, 8, 1), (240, 12, 1))
