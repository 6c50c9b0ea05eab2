"""Progress in a log file: whole lines with the time left, one bar at a time, no carriage returns or escapes."""

from __future__ import annotations

import io

from service.progress import _Lines, progress_bar


def test_progress_in_a_log_is_whole_lines_with_the_time_left():
    log = io.StringIO()
    bar = _Lines(total=20, desc="train shop", unit="step", file=log)
    for _ in range(20):
        bar.update()
        bar.set_postfix(loss="0.123")
    bar.close()
    lines = log.getvalue().splitlines()
    assert 2 <= len(lines) <= 11 and lines[-1].startswith("train shop: 20/20 step in ")
    assert "s left" in lines[0] and "loss=0.123" in lines[0]
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()


def test_off_a_terminal_the_bar_is_lines(capsys):
    bar = progress_bar(total=3, desc="scoring 2 configurations", unit="req")  # pytest's stderr is no terminal
    bar.update(3)
    bar.close()
    assert capsys.readouterr().err == "scoring 2 configurations: 3/3 req in 0 s\n"
