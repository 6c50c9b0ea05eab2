"""Progress of long work (training, evaluation) that reads well on a terminal and in a log file.

On a terminal it is tqdm's bar. Anywhere else (a log file, the onboarding child's log, CI) a bar's carriage
returns and escape codes turn into noise, and bars drawn at once interleave; there it is plain lines instead,
one every tenth of the work or every 30 s, each with what is done, the time taken and the time left.
"""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["library_bars_on_terminal_only", "progress_bar"]

_EVERY_S = 30.0


class _Lines:
    """tqdm's interface as far as nl2dsl uses it, written as whole lines."""

    def __init__(self, *, total: int, desc: str, unit: str, initial: int = 0, file=None) -> None:  # noqa: ANN001
        self.total, self.desc, self.unit, self.n, self._initial = total, desc, unit, initial, initial
        self._file = file or sys.stderr
        self._started = time.monotonic()
        self._said_at, self._said_n = self._started, initial
        self._postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        tenth = max(1, (self.total or 1) // 10)
        if self.n - self._said_n >= tenth or now - self._said_at >= _EVERY_S or self.n == self.total:
            self._say(now)

    def set_postfix(self, **values: Any) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def write(self, line: str) -> None:
        print(line, file=self._file, flush=True)

    def close(self) -> None:
        if self.n != self._said_n:
            self._say(time.monotonic())

    def _say(self, now: float) -> None:
        elapsed = now - self._started
        done = self.n - self._initial
        left = ""
        if self.total and done > 0 and self.n < self.total:
            left = f", ~{elapsed / done * (self.total - self.n):.0f} s left"
        postfix = f", {self._postfix}" if self._postfix else ""
        total = f"/{self.total}" if self.total else ""
        self.write(f"{self.desc}: {self.n}{total} {self.unit} in {elapsed:.0f} s{left}{postfix}")
        self._said_at, self._said_n = now, self.n


def progress_bar(*, total: int, desc: str, unit: str, enabled: bool = True, initial: int = 0):
    """A tqdm bar on a terminal; whole lines elsewhere; nothing when not ``enabled``."""
    from tqdm import tqdm

    if not enabled or sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled)
    return _Lines(total=total, desc=desc, unit=unit, initial=initial)


def library_bars_on_terminal_only() -> None:
    """Off a terminal, turn off the bars transformers draws itself (loading weights): in a log they are noise."""
    if not sys.stderr.isatty():
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
