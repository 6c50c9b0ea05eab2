"""Spike: steady load, a sudden 4x jump for a minute, then back: does the queue drain?"""

from loadtest.shapes.stages import Stages


class Spike(Stages):
    stages = ((60, 3, 1), (120, 12, 12), (180, 3, 12), (240, 3, 1))
