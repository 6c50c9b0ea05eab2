"""Scores for one generated program against the gold one.

- ``exact_match``: the whole program, ignoring surrounding whitespace.
- ``string_similarity``: difflib ratio of whitespace-normalised strings (the study's "similarity" family).
- ``tree_similarity``: 1 - tree edit distance / size of the larger tree, over the lark parse trees, with the
  top-level items (flow actions, SQL clauses) matched as an ordered sequence: an order-aware score that
  still gives partial credit for a swapped or missing action. Unparseable code scores 0.
- ``hallucinations``: operation names and parameter keys (flow) or tables and columns (sql) that the catalog
  or schema does not have, read with a loose pattern so that unconstrained, unparseable output is counted too.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import lark

from service.grammars import Grammar, ParseResult

__all__ = ["Hallucinations", "exact_match", "hallucinations", "parsed_tree_similarity", "string_similarity",
           "tree_similarity"]


def exact_match(code: str, gold: str) -> bool:
    return code.strip() == gold.strip()


def string_similarity(code: str, gold: str) -> float:
    a, b = " ".join(code.split()), " ".join(gold.split())
    if not a and not b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def tree_similarity(grammar: Grammar, code: str, gold: str) -> float:
    return parsed_tree_similarity(grammar.parse(code), grammar.parse(gold))


def parsed_tree_similarity(got: ParseResult, want: ParseResult) -> float:
    """:func:`tree_similarity` of code and gold already parsed (an evaluation parses each pair once)."""
    if not (got.valid and want.valid):
        return 0.0
    a, b = _Node.of(got.tree), _Node.of(want.tree)
    return max(0.0, 1.0 - tree_edit_distance(a, b) / max(a.size, b.size))


@dataclass(frozen=True)
class Hallucinations:
    names: int  # operations (flow) or tables (sql) used
    bad_names: int  # ... that do not exist
    keys: int  # parameter keys (flow) or columns (sql) used
    bad_keys: int  # ... that do not exist


_CALL = re.compile(r"\b([a-z_][a-z0-9_]*)\.([a-z_][a-z0-9_]*)\(([^()\n]*)\)?")
_KEY = re.compile(r"(?:^|,)\s*([A-Za-z_][A-Za-z0-9_]*)\s*:")
_SQL_WORDS = {"select", "from", "where", "and", "or", "group", "by", "order", "limit", "join", "on", "as", "asc",
              "desc", "count", "sum", "avg", "min", "max", "distinct", "is", "not", "null", "like", "in", "having"}


def hallucinations(grammar: Grammar, code: str, *, context: str | None = None) -> Hallucinations:
    """Count names and keys in ``code`` that the DSL's catalog (flow) or the request's schema (sql) lacks."""
    if grammar.catalog is not None:
        names = keys = bad_names = bad_keys = 0
        for connector, op_name, args in _CALL.findall(code):
            names += 1
            op = grammar.catalog.find(f"{connector}.{op_name}")
            bad_names += op is None
            for key in _KEY.findall(args):
                keys += 1
                bad_keys += op is None or key not in {p.name for p in op.params}
        return Hallucinations(names, bad_names, keys, bad_keys)
    if context:
        return _sql_hallucinations(code, context)
    return Hallucinations(0, 0, 0, 0)


def _sql_hallucinations(code: str, context: str) -> Hallucinations:
    schema = {table: {c.strip() for c in cols.split(",")} for table, cols in re.findall(r"(\w+)\(([^)]*)\)", context)}
    all_columns = set().union(*schema.values()) if schema else set()
    without_strings = re.sub(r"'[^']*'", "''", code)
    tables = re.findall(r"\b(?:FROM|JOIN)\s+([A-Za-z_]\w*)", without_strings, flags=re.IGNORECASE)
    identifiers = [w for w in re.findall(r"\b([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)\b", without_strings)
                   if w.lower() not in _SQL_WORDS and w not in tables and not w.isupper()]
    aliases = set(re.findall(r"\bAS\s+([A-Za-z_]\w*)", without_strings, flags=re.IGNORECASE))
    columns = [w for w in identifiers if w not in aliases]
    bad_columns = 0
    for column in columns:
        table, _, name = column.rpartition(".")
        bad_columns += (name not in schema.get(table, set())) if table else (name not in all_columns)
    return Hallucinations(len(tables), sum(t not in schema for t in tables), len(columns), bad_columns)


class _Node:
    """A parse tree node as (label, children); tokens become leaves labelled with their text."""

    __slots__ = ("label", "children", "size")

    def __init__(self, label: str, children: list[_Node]) -> None:
        self.label, self.children = label, children
        self.size = 1 + sum(c.size for c in children)

    @classmethod
    def of(cls, item: lark.Tree | lark.Token) -> _Node:
        if isinstance(item, lark.Token):
            return cls(f"{item.type}={item.value}", [])
        # lark puts None where an optional in brackets ([x]) is absent: an absent item is no node.
        return cls(str(item.data), [cls.of(child) for child in item.children if child is not None])


def tree_edit_distance(a: _Node, b: _Node) -> int:
    """Ordered tree edit distance (unit costs): relabel, insert, delete; children aligned as sequences.

    Top-down (Selkow) distance: a node can only map to a node at the same depth, which is what "the same
    action in another position" and "a missing clause" mean here, and is quadratic rather than cubic.
    """
    cost = 0 if a.label == b.label else 1
    n, m = len(a.children), len(b.children)
    # dp[i][j]: distance between the first i children of a and the first j children of b
    dp = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        dp[i][0] = dp[i - 1][0] + a.children[i - 1].size
    for j in range(1, m + 1):
        dp[0][j] = dp[0][j - 1] + b.children[j - 1].size
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            dp[i][j] = min(
                dp[i - 1][j] + a.children[i - 1].size,
                dp[i][j - 1] + b.children[j - 1].size,
                dp[i - 1][j - 1] + tree_edit_distance(a.children[i - 1], b.children[j - 1]),
            )
    return cost + dp[n][m]
