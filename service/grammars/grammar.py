"""A compiled DSL and what parsing its code says: valid, the tree, or where it stops.

A grammar the operator ships (``grammars/``) carries its lark parser and is parsed in the server, beside the
event loop; a grammar a tenant uploads carries none: its code is parsed only in the sandbox's worker
processes, where a parse is cut off at its time and memory bounds (:mod:`service.grammars.sandbox`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import lark

from service.grammars.bounds import DecodingLimits
from service.grammars.catalog import Catalog
from service.grammars.comparison import Comparison
from service.grammars.examples import Example

__all__ = ["Grammar", "Origin", "ParseError", "ParseResult", "describe_parse_error", "parse_with"]

#: "shipped" (grammars/), "tenant" (a tenant's variant of a shipped DSL) or "upload" (POST /dsls).
Origin = Literal["shipped", "tenant", "upload"]


@dataclass(frozen=True)
class ParseError:
    """Where and why code does not parse (1-based line and column)."""

    message: str
    line: int | None = None
    column: int | None = None
    expected: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ParseResult:
    valid: bool
    tree: lark.Tree | None = None
    error: ParseError | None = None


@dataclass(frozen=True, eq=False)
class Grammar:
    """A DSL: the lark text it is parsed with, the grammar the engine decodes with, and its metadata.

    ``engine_text`` is derived from ``text`` for the engine (what can run away bounded, service.grammars.bounds),
    narrowed to the tenant's safety policy where it has one: output is parsed with the full grammar, so an
    unconstrained output that breaks the policy parses and is refused by name by the safety check, while
    constrained decoding cannot produce it at all.
    """

    name: str
    description: str
    text: str
    engine_text: str
    #: None for uploads: parsed only in the sandbox.
    parser: lark.Lark | None = None
    examples: tuple[Example, ...] = ()
    catalog: Catalog | None = None
    #: The tenant whose private connectors this grammar includes (None: the shared grammar).
    tenant: str | None = None
    #: The .lark text before catalog rules were added (to compile tenant variants).
    structure: str = ""
    start: str = "start"
    origin: Origin = "shipped"
    #: How far the engine's grammar lets what can run away go, and what it bounded (for a person).
    limits: DecodingLimits = DecodingLimits()
    bounded: tuple[str, ...] = ()
    #: Warnings of the engine's grammar check (the grammar is served; the uploader sees them).
    warnings: tuple[str, ...] = ()
    #: Uploads: the tenant who published it (None: an admin's, shared) and its version in the store.
    owner: str | None = None
    version: int | None = None
    #: How two of its programs are compared (service.grammars.comparison).
    compare: Comparison = Comparison()

    @property
    def metric_label(self) -> str:
        """The ``dsl`` label in metrics: uploaded grammars, named by their owners, count as "custom"."""
        return "custom" if self.origin == "upload" else self.name

    def parse(self, code: str) -> ParseResult:
        """Parse ``code`` with the grammar's own parser; never raises for bad code, returns where it stops."""
        if self.parser is None:
            raise RuntimeError(f"grammar {self.name!r} is parsed in the sandbox only")
        return parse_with(self.parser, code)


def parse_with(parser: lark.Lark, code: str) -> ParseResult:
    """Parse ``code``; a syntax error becomes a :class:`ParseError` with the position and what was expected."""
    try:
        tree = parser.parse(code)
    except lark.UnexpectedInput as exc:
        return ParseResult(valid=False, error=describe_parse_error(exc, code, parser))
    if isinstance(tree, lark.Token):  # `?start` inlined down to one token: still a tree, named for its rule
        tree = lark.Tree(parser.options.start[0], [tree])
    return ParseResult(valid=True, tree=tree)


def describe_parse_error(exc: lark.UnexpectedInput, code: str, parser: lark.Lark) -> ParseError:
    expected: set[str] = set()
    if isinstance(exc, lark.UnexpectedCharacters):
        expected = set(exc.allowed or ())
        at = exc.pos_in_stream
        message = f"unexpected character {code[at]!r}" if at < len(code) else "unexpected input"
    elif isinstance(exc, lark.UnexpectedEOF):
        expected = set(exc.expected or ())
        message = "unexpected end of code"
    elif isinstance(exc, lark.UnexpectedToken):
        expected = set(exc.expected or ())
        message = f"unexpected {exc.token!r}"
    else:  # pragma: no cover - lark has no other UnexpectedInput subclasses today
        message = str(exc)
    line, column = getattr(exc, "line", None), getattr(exc, "column", None)
    if line in (None, -1):  # lark reports EOF without a position: point just past the last character
        lines = code.split("\n")
        line, column = len(lines), len(lines[-1]) + 1
    names = sorted({_describe_terminal(parser, e) for e in expected})
    return ParseError(message=message, line=line, column=column, expected=names)


def _describe_terminal(parser: lark.Lark, name: str) -> str:
    """A person's name for a terminal: the literal for anonymous strings (`"then "`), else its name."""
    try:
        pattern = parser.get_terminal(name).pattern
    except KeyError:
        return name
    if isinstance(pattern, lark.lexer.PatternStr):
        return json.dumps(pattern.value)
    return f"/{pattern.value}/" if name.startswith("__ANON") else name
