"""A load shape made of stages: hold ``users`` until ``until`` seconds, then the next stage."""

from __future__ import annotations

from locust import LoadTestShape

__all__ = ["Stages"]


class Stages(LoadTestShape):
    abstract = True
    #: (until second, users, spawn rate per second), in order; the run stops after the last stage.
    stages: tuple[tuple[float, int, float], ...] = ()

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        for until, users, rate in self.stages:
            if elapsed < until:
                return users, rate
        return None
