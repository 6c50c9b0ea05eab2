"""Synthetic NL -> SQL pairs over several schemas; the test split holds out whole query shapes.

A query is built clause by clause (select, where, group by, order by, limit, join); its *shape* is the
tuple of clause kinds it uses, and a fixed set of shapes appears only in the test split, so the score
measures whether the model composes clauses it has seen separately. Each pair carries its schema as context.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["HELD_OUT_SHAPES", "SCHEMAS", "SqlGenerator", "SqlPair"]


@dataclass(frozen=True)
class SqlPair:
    text: str
    code: str
    context: str
    shape: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    name: str
    noun: str  # how a sentence names one row's plural ("orders", "employees")
    numeric: tuple[str, ...]
    text: dict[str, tuple[str, ...]]  # text column -> sample values
    key: str = "id"

    @property
    def columns(self) -> list[str]:
        return [self.key, *self.text, *self.numeric]

    def schema(self) -> str:
        return f"{self.name}({', '.join(self.columns)})"


SCHEMAS: dict[str, Table] = {
    t.name: t
    for t in [
        Table("orders", "orders", ("total", "quantity"), {"status": ("paid", "shipped", "cancelled", "pending"),
                                                         "channel": ("web", "store", "phone")}),
        Table("products", "products", ("price", "stock"), {"category": ("books", "toys", "games", "garden"),
                                                          "name": ("Lamp", "Chair", "Desk")}),
        Table("employees", "employees", ("salary", "age"), {"department": ("sales", "engineering", "marketing", "hr"),
                                                           "city": ("Paris", "Berlin", "Austin")}),
        Table("customers", "customers", ("credit_limit", "visits"), {"country": ("France", "Germany", "Spain", "Japan"),
                                                                    "segment": ("retail", "enterprise")}),
        Table("tickets", "tickets", ("priority_level", "hours_open"), {"state": ("open", "closed", "waiting"),
                                                                      "team": ("billing", "infra", "support")}),
        Table("movies", "movies", ("rating", "runtime"), {"genre": ("drama", "comedy", "horror", "documentary"),
                                                          "language": ("english", "french", "korean")}),
    ]
}
# (child, parent, foreign key) pairs for the simple JOIN
_JOINS = [("orders", "customers", "customer_id"), ("tickets", "employees", "assignee_id")]

_AGG_NL = {"SUM": ["total {col}", "sum of {col}"], "AVG": ["average {col}", "mean {col}"],
           "MIN": ["lowest {col}", "minimum {col}"], "MAX": ["highest {col}", "maximum {col}"]}
_CMP_NL = {">": ["above {v}", "greater than {v}", "over {v}", "more than {v}"],
           "<": ["below {v}", "less than {v}", "under {v}"],
           ">=": ["at least {v}", "{v} or more"], "<=": ["at most {v}", "{v} or less"],
           "=": ["equal to {v}", "of {v}"]}
_OPENERS = ["show", "list", "give me", "find", "get", "return", "what are", "display"]
_PREFIXES = ["", "", "", "please ", "could you ", "I need to ", "can you "]
_SUFFIXES = ["", "", "?", ".", " please"]

#: Query shapes that only the test split contains.
HELD_OUT_SHAPES: set[tuple[str, ...]] = {
    ("cols", "where2", "order", "limit"),
    ("star", "where", "order"),
    ("group", "where", "limit"),
    ("count", "where2"),
    ("agg", "where2"),
    ("join", "where"),
}


def _num(rng: random.Random) -> str:
    return str(rng.choice([1, 3, 5, 10, 18, 20, 25, 40, 50, 100, 250, 1000]))


class SqlGenerator:
    def pair(self, rng: random.Random, kind: str, *, where: int, order: bool, limit: bool) -> SqlPair:
        if kind == "join":
            child_name, parent_name, fk = rng.choice(_JOINS)
            child, parent = SCHEMAS[child_name], SCHEMAS[parent_name]
            if child_name == "tickets":  # the schema of this pair has the foreign key
                child = Table(child.name, child.noun, child.numeric, {**child.text, "assignee_id": ()})
            else:
                child = Table(child.name, child.noun, child.numeric, {**child.text, fk: ()})
            return self._join(rng, child, parent, fk, where=where)
        table = SCHEMAS[rng.choice(sorted(SCHEMAS))]
        shape = [kind] + (["where" if where == 1 else "where2"] if where else []) + (["order"] if order else []) + (
            ["limit"] if limit else [])
        where_sql, where_nl = self._where(rng, table, where)
        if kind == "cols":
            cols = rng.sample([c for c in table.columns if c != table.key], rng.choice([1, 2, 2, 3]))
            select, nl = ", ".join(cols), f"{rng.choice(_OPENERS)} the {_and(cols)} of {table.noun}"
            order_col = rng.choice(table.numeric)
        elif kind == "star":
            select, nl = "*", f"{rng.choice(_OPENERS)} all {table.noun}"
            order_col = rng.choice(table.numeric)
        elif kind == "count":
            select, nl = "COUNT(*)", rng.choice([f"how many {table.noun} are there", f"count the {table.noun}",
                                                 f"number of {table.noun}"])
            order, limit, order_col = False, False, ""
        elif kind == "distinct":
            col = rng.choice(list(table.text))
            select = f"COUNT(DISTINCT {col})"
            nl = rng.choice([f"how many different {col} values do {table.noun} have",
                             f"count the distinct {col} of {table.noun}"])
            order, limit, order_col = False, False, ""
        elif kind == "agg":
            func, col = rng.choice(sorted(_AGG_NL)), rng.choice(table.numeric)
            select = f"{func}({col})"
            nl = f"{rng.choice(['what is the', 'show the', 'compute the', 'get the'])} " \
                 f"{rng.choice(_AGG_NL[func]).format(col=col)} of {table.noun}"
            order, limit, order_col = False, False, ""
        else:  # group
            key = rng.choice(list(table.text))
            func, col = rng.choice(sorted(_AGG_NL) + ["COUNT"]), rng.choice(table.numeric)
            agg = "COUNT(*)" if func == "COUNT" else f"{func}({col})"
            agg_nl = f"number of {table.noun}" if func == "COUNT" else rng.choice(_AGG_NL[func]).format(col=col)
            select = f"{key}, {agg}"
            nl = rng.choice([f"{agg_nl} per {key}", f"{agg_nl} by {key}", f"for each {key}, the {agg_nl}"])
            order_col = agg
            group_sql = f" GROUP BY {key}"
        sql = f"SELECT {select} FROM {table.name}{where_sql}"
        nl = f"{nl}{where_nl}"
        if kind == "group":
            sql += group_sql
        if order:
            direction = rng.choice([" DESC", " ASC", ""])
            order_nl = {" DESC": ["highest {c} first", "sorted by {c} descending", "ordered by {c} from high to low"],
                        " ASC": ["lowest {c} first", "sorted by {c} ascending", "ordered by {c} from low to high"],
                        "": ["sorted by {c}", "ordered by {c}"]}[direction]
            shown = order_col if kind != "group" else "that"
            if kind == "group":
                order_nl = {" DESC": ["largest first", "in descending order"], " ASC": ["smallest first",
                            "in ascending order"], "": ["in order"]}[direction]
            sql += f" ORDER BY {order_col}{direction}"
            nl += ", " + rng.choice(order_nl).format(c=shown)
        if limit:
            n = _num(rng)
            sql += f" LIMIT {n}"
            nl += rng.choice([f", only {n} rows", f", top {n}", f", limit {n}", f", at most {n} results"])
        return SqlPair(text=_dress(rng, nl), code=sql, context=table.schema(), shape=tuple(shape))

    def _join(self, rng: random.Random, child: Table, parent: Table, fk: str, *, where: int) -> SqlPair:
        child_col = rng.choice(list(child.numeric))
        parent_col = rng.choice(list(parent.text))
        sql = (f"SELECT {parent.name}.{parent_col}, {child.name}.{child_col} FROM {parent.name} "
               f"JOIN {child.name} ON {parent.name}.{parent.key} = {child.name}.{fk}")
        nl = f"{rng.choice(_OPENERS)} each {parent.noun[:-1]}'s {parent_col} with the {child_col} of their {child.noun}"
        shape = ["join"]
        if where:
            col = rng.choice(child.numeric)
            op, v = rng.choice(sorted(_CMP_NL)), _num(rng)
            sql += f" WHERE {child.name}.{col} {op} {v}"
            nl += f" where the {child.noun[:-1]} {col} is {rng.choice(_CMP_NL[op]).format(v=v)}"
            shape.append("where")
        context = f"{parent.schema()}; {child.schema()}"
        return SqlPair(text=_dress(rng, nl), code=sql, context=context, shape=tuple(shape))

    def _where(self, rng: random.Random, table: Table, n: int) -> tuple[str, str]:
        if not n:
            return "", ""
        sql_parts, nl_parts = [], []
        for _ in range(n):
            if rng.random() < 0.5:
                col = rng.choice(list(table.text))
                value = rng.choice(table.text[col])
                negate = rng.random() < 0.2
                sql_parts.append(f"{col} {'!=' if negate else '='} '{value}'")
                nl_parts.append(f"{col} is {'not ' if negate else ''}{value}")
            else:
                col, op, v = rng.choice(table.numeric), rng.choice(sorted(_CMP_NL)), _num(rng)
                sql_parts.append(f"{col} {op} {v}")
                nl_parts.append(f"{col} {rng.choice(_CMP_NL[op]).format(v=v)}")
        joiner = rng.choice([" AND ", " OR "]) if n > 1 else ""
        sql = " WHERE " + joiner.join(sql_parts) if n > 1 else " WHERE " + sql_parts[0]
        nl_join = {" AND ": " and ", " OR ": " or "}.get(joiner, "")
        nl = rng.choice([" where ", " with ", " whose "]) + nl_join.join(nl_parts)
        return sql, nl

    def sample_shape(self, rng: random.Random) -> tuple[str, dict]:
        kind = rng.choice(["cols", "cols", "star", "count", "distinct", "agg", "group", "group", "join"])
        where = rng.choice([0, 1, 1, 2]) if kind != "join" else rng.choice([0, 1])
        order = kind in ("cols", "star", "group") and rng.random() < 0.5
        limit = kind in ("cols", "star", "group") and rng.random() < 0.4
        return kind, {"where": where, "order": order, "limit": limit}

    def generate(self, *, n: int, seed: int, test: bool) -> Iterator[SqlPair]:
        """``n`` distinct pairs; test pairs have a held-out shape, train pairs never do."""
        rng = random.Random(seed)
        seen: set[str] = set()
        made = 0
        while made < n:
            kind, options = self.sample_shape(rng)
            p = self.pair(rng, kind, **options)
            if (p.shape in HELD_OUT_SHAPES) != test or p.text in seen:
                continue
            seen.add(p.text)
            made += 1
            yield p


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _dress(rng: random.Random, nl: str) -> str:
    text = rng.choice(_PREFIXES) + nl + rng.choice(_SUFFIXES)
    return text[0].upper() + text[1:] if rng.random() < 0.6 else text
