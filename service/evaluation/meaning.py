"""Do two programs mean the same? Exact, canonical and semantic matches, per DSL.

- *exact*: the same text, surrounding whitespace aside;
- *canonical*: the same canonical form (:mod:`service.grammars.comparison`: unordered rules sorted, literals
  normalized); every DSL has it;
- *semantic*: the same computed meaning, for DSLs whose ``compare.semantic`` names a plug-in:

  ``sql``    both queries run on fixture databases made from the request's schema (sqlite, in memory; rows
             drawn from the literals both queries use, so their filters select something); the rows compared
             as bags, or as lists when the reference orders them. Each query is cut off after a bounded number
             of sqlite steps.
  ``cron``   the schedules' sets of minutes, hours, days and months, expanded by croniter, with cron's rule
             for a day that both day fields restrict (either fires).
  ``regex``  the languages are equal (interegular's automata); patterns over ``MAX_REGEX_CHARS`` are not
             compared.

Code that does not parse matches only by its exact text. Each score is computed on its own, and a plug-in
that cannot tell (an error, a bound) says "no".
"""

from __future__ import annotations

import random
import re
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from service.grammars import Grammar, ParseResult
from service.grammars.comparison import canonical

__all__ = ["MAX_REGEX_CHARS", "Match", "match", "same_cron", "same_regex", "same_sql"]

#: Regular expressions longer than this are not compared (automata can grow exponentially with the pattern).
MAX_REGEX_CHARS = 200
#: sqlite virtual-machine steps a query may take on a fixture database before it is stopped.
_SQL_STEPS = 2_000_000
_SQL_ROWS = 40
_SQL_DATABASES = 3


@dataclass(frozen=True)
class Match:
    """One program against the reference: each score the DSL has (semantic: None when it declares none)."""

    exact: bool
    canonical: bool
    semantic: bool | None = None


def match(grammar: Grammar, code: str, gold: str, *, context: str | None = None,
          parsed: tuple[ParseResult, ParseResult] | None = None) -> Match:
    """``code`` against ``gold`` by every score ``grammar`` declares (parsed with the grammar's own parser, unless
    ``parsed`` brings both parses)."""
    exact = code.strip() == gold.strip()
    semantic_name = grammar.compare.semantic
    got, want = parsed or (grammar.parse(code), grammar.parse(gold))
    parsed = got.valid and want.valid
    same_form = exact or (parsed and canonical(got.tree, grammar.compare) == canonical(want.tree, grammar.compare))
    semantic = None
    if semantic_name is not None:
        semantic = exact or (parsed and _SEMANTICS[semantic_name](code, gold, context))
    return Match(exact=exact, canonical=same_form, semantic=semantic)


def same_cron(code: str, gold: str, _context: str | None = None) -> bool:
    """Whether two five-field cron schedules fire at the same times."""
    try:
        return _cron_times(code) == _cron_times(gold)
    except (ValueError, KeyError, TypeError):
        return False


def _cron_times(expression: str) -> tuple:
    from croniter import croniter

    fields, nth = croniter.expand(expression)
    full = [set(range(0, 60)), set(range(0, 24)), set(range(1, 32)), set(range(1, 13)), set(range(0, 7))]
    sets = [full[i] if values == ["*"] else {int(v) % 7 if i == 4 else int(v) for v in values}
            for i, values in enumerate(fields[:5])]
    minute, hour, day, month, weekday = sets
    restricted_day, restricted_weekday = fields[2] != ["*"], fields[4] != ["*"]
    if restricted_day and restricted_weekday:
        days: tuple = ("either", frozenset(day), frozenset(weekday))
    elif restricted_weekday:
        days = ("weekday", frozenset(weekday))
    else:
        days = ("day", frozenset(day))
    return frozenset(minute), frozenset(hour), days, frozenset(month), tuple(sorted(nth.items()))


def same_regex(code: str, gold: str, _context: str | None = None) -> bool:
    """Whether two regular expressions accept the same strings (both within ``MAX_REGEX_CHARS``)."""
    if max(len(code), len(gold)) > MAX_REGEX_CHARS:
        return False
    import interegular

    try:
        return interegular.parse_pattern(code).to_fsm().equivalent(interegular.parse_pattern(gold).to_fsm())
    except Exception:  # noqa: BLE001 - interegular raises many kinds for what it cannot read: not the same
        return False


_TABLE = re.compile(r"([A-Za-z_]\w{0,63})\s*\(([^()]{0,2000})\)")
_NUMBER_LITERAL = re.compile(r"(?<![\w.'])-?\d+(?:\.\d+)?")
_STRING_LITERAL = re.compile(r"'([^'\n]{0,200})'")


def same_sql(code: str, gold: str, context: str | None = None) -> bool:
    """Whether two SELECT queries return the same rows on fixture databases made from ``context`` (the
    request's schema, ``table(col, ...); ...``): as bags, or as lists when ``gold`` has ORDER BY."""
    schema = _TABLE.findall(context or "")[:8]
    if not schema:
        return False
    numbers = sorted({float(n) for n in _NUMBER_LITERAL.findall(code + " " + gold)})
    strings = sorted(set(_STRING_LITERAL.findall(code + " " + gold)))
    ordered = "ORDER BY" in gold.upper()
    for seed in range(_SQL_DATABASES):
        got = _run(_fixture(schema, numbers, strings, seed), code)
        expected = _run(_fixture(schema, numbers, strings, seed), gold)
        if got is None or expected is None:
            return False
        if (got != expected) if ordered else (Counter(got) != Counter(expected)):
            return False
    return True


def _fixture(schema: list[tuple[str, str]], numbers: list[float], strings: list[str], seed: int) -> sqlite3.Connection:
    """An in-memory database with the schema's tables, filled with rows drawn from the queries' literals (and
    their neighbours on either side, a few other values and NULLs), the same for a seed."""
    rng = random.Random(seed)
    pool: list[object] = [n + d for n in numbers for d in (-1, -0.5, 0, 0.5, 1)] + list(strings) + [0, 1, 2, 7, 50, 100,
                                                                                          "a", "z", None]
    db = sqlite3.connect(":memory:")
    for table, columns in schema:
        names = [c.strip() for c in columns.split(",") if re.fullmatch(r"[A-Za-z_]\w{0,63}", c.strip())][:32]
        if not names:
            continue
        db.execute(f'CREATE TABLE "{table}" ({", ".join(f"{n!r}" for n in names)})'.replace("'", '"'))
        for i in range(_SQL_ROWS):
            values = [i % 10 if n == "id" or n.endswith("_id") else rng.choice(pool) for n in names]
            db.execute(f'INSERT INTO "{table}" VALUES ({", ".join("?" * len(names))})', values)
    return db


def _run(db: sqlite3.Connection, query: str) -> list[tuple] | None:
    """The rows of ``query`` (read only, bounded in steps), or None when it fails."""
    steps = 0

    def bound() -> int:
        nonlocal steps
        steps += 1000
        return 1 if steps > _SQL_STEPS else 0

    db.set_progress_handler(bound, 1000)
    try:
        if not query.lstrip().upper().startswith("SELECT"):
            return None
        return [tuple(row) for row in db.execute(query).fetchmany(10_000)]
    except sqlite3.Error:
        return None
    finally:
        db.close()


_SEMANTICS: dict[str, Callable[[str, str, str | None], bool]] = {"sql": same_sql, "cron": same_cron,
                                                                 "regex": same_regex}
