"""Cron schedules (``m h dom mon dow``) from requests phrased as people write them: the onboarding demo DSL.

Written apart from the flow and sql generators: its own vocabulary (times of day, weekdays, months, intervals),
messy phrasing (synonyms, "9am" / "09:00" / "nine", missing words, typos). Deterministic for a seed.
``python -m service.demo_data.cron OUT.jsonl [N]`` writes N pairs (default 1,000).
"""

from __future__ import annotations

import random
from functools import partial

from service.demo_data import pairs as demo_pairs

__all__ = ["generate"]

_DAYS = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]
_SHORT_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december"]
_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine",
          10: "ten", 11: "eleven", 12: "twelve"}
_ORDINALS = {1: "1st", 2: "2nd", 3: "3rd", 21: "21st", 22: "22nd", 23: "23rd", 31: "31st"}
_EVERY = ["every", "each", "evry", "every single"]
_OPENERS = ["", "", "run ", "schedule it ", "trigger ", "please run this ", "job should run ", "fire "]
_TYPOS = {"every": "evrey", "minutes": "minuts", "monday": "monady", "hour": "hoour", "day": "dya"}


def _time_of_day(rng: random.Random, hour: int, minute: int) -> str:
    if hour == 0 and minute == 0 and rng.random() < 0.5:
        return "midnight"
    if hour == 12 and minute == 0 and rng.random() < 0.5:
        return "noon"
    style = rng.randrange(4)
    twelve = hour % 12 or 12
    suffix = "am" if hour < 12 else "pm"
    if style == 0:
        return f"{hour:02d}:{minute:02d}"
    if style == 1:
        return f"{twelve}{suffix}" if minute == 0 else f"{twelve}:{minute:02d}{suffix}"
    if style == 2:
        return f"{twelve}:{minute:02d} {suffix.upper()}"
    word = _WORDS.get(twelve, str(twelve))
    return f"{word} {'in the morning' if hour < 12 else 'in the evening' if hour >= 18 else 'in the afternoon'}" \
        if minute == 0 else f"{hour}:{minute:02d}"


def _ordinal(day: int) -> str:
    return _ORDINALS.get(day, f"{day}th")


def _one(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(8)
    every = rng.choice(_EVERY)
    hour, minute = rng.randrange(24), rng.choice([0, 0, 0, 15, 30, 45, 5, 10, 20])
    at = _time_of_day(rng, hour, minute)
    if kind == 0:
        n = rng.choice([5, 10, 15, 20, 30])
        return f"{every} {n} minutes", f"*/{n} * * * *"
    if kind == 1:
        n = rng.choice([2, 3, 4, 6, 8, 12])
        return rng.choice([f"{every} {n} hours", f"once every {n} hours", f"{every} {n}h"]), \
            f"0 */{n} * * *"
    if kind == 2:
        return rng.choice([f"{every} day at {at}", f"daily at {at}", f"at {at} {every} day", f"{at} daily"]), \
            f"{minute} {hour} * * *"
    if kind == 3:
        d = rng.randrange(7)
        name = rng.choice([_DAYS[d], _SHORT_DAYS[d], _DAYS[d] + "s"])
        return rng.choice([f"{every} {name} at {at}", f"on {name} at {at}", f"{name} {at}"]), \
            f"{minute} {hour} * * {d}"
    if kind == 4:
        return rng.choice([f"weekdays at {at}", f"{every} weekday at {at}", f"monday to friday at {at}",
                           f"mon-fri {at}"]), f"{minute} {hour} * * 1-5"
    if kind == 5:
        return rng.choice([f"weekends at {at}", f"saturday and sunday at {at}", f"on weekends {at}"]), \
            f"{minute} {hour} * * 0,6"
    if kind == 6:
        day = rng.choice([1, 1, 2, 5, 10, 15, 20, 28])
        return rng.choice([f"on the {_ordinal(day)} of {every} month at {at}", f"monthly on day {day} at {at}",
                           f"{at} on the {_ordinal(day)} of the month"]), f"{minute} {hour} {day} * *"
    month = rng.randrange(12)
    day = rng.choice([1, 10, 15, 25])
    name = rng.choice([_MONTHS[month], _MONTHS[month][:3]])
    return rng.choice([f"{every} year on {name} {day} at {at}", f"on {_ordinal(day)} {name} at {at}",
                       f"yearly, {name} {_ordinal(day)}, {at}"]), f"{minute} {hour} {day} {month + 1} *"


_messy = partial(demo_pairs.roughen, openers=_OPENERS, typos=_TYPOS, endings=[" pls", " thanks", "!", "."])


def generate(n: int, *, seed: int = 0) -> list[dict[str, str]]:
    """``n`` pairs ``{"text", "code"}``."""
    return demo_pairs.generate(n, seed, _one, _messy)


if __name__ == "__main__":
    demo_pairs.main(generate)
