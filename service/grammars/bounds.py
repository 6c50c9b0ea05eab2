"""Derive the grammar the engine decodes with from a Lark grammar as its author wrote it.

The author's grammar is kept as written for parsing (lark). Decoding with it as written, a weak model can run
a list, a word, whitespace or nesting until ``max_tokens``; so the engine gets a derived grammar in which what
can run away is bounded (limits per DSL, :class:`DecodingLimits`):

    repetitions   ``x*`` and ``x+`` of rules at most ``repeat`` times; inside terminals (``X+``, regex ``*``,
                  ``+``, ``{n,}``) at most ``terminal_repeat`` times
    ignored text  ``%ignore`` becomes one optional ignored piece of at most ``ignored_chars`` characters before
                  each token (llguidance would allow any number of ignored pieces in a row)
    recursion     rules that recurse are unrolled: a derivation passes through them at most ``depth`` times (one
                  JSON nesting level is two passes, array -> value -> array); past that only other alternatives
    imports       ``%import common.NAME`` is inlined from lark's own ``common`` grammar and bounded like the rest

Every change only removes strings, so the derived grammar accepts a subset of what lark parses with the
original: output that finishes by itself parses. Rule and terminal priorities, which only choose between
parses, are dropped (the engine has none). What the engine cannot decode with (templates, ``%declare``,
``%override``, lazy regex quantifiers, look-around, imports other than ``common``) is refused naming the
construct, line and column.

Longer than ~400 lines on purpose: one rewrite of lark's grammar tree, whose parts (repetitions, terminals'
regular expressions, ignored text, recursion, imports) call each other while walking the same tree.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from dataclasses import dataclass, field
from typing import Any

import lark

from service.errors import GrammarInvalid

__all__ = ["DecodingLimits", "Derived", "derive"]

#: The terminal all ignored text becomes in the derived grammar.
IGNORED = "NL2DSL_IGNORED"


@dataclass(frozen=True)
class DecodingLimits:
    """How far the derived grammar lets what can run away go (per DSL; ``POST /dsls`` takes them)."""

    repeat: int = 32
    terminal_repeat: int = 128
    ignored_chars: int = 16
    depth: int = 24


@dataclass(frozen=True)
class Derived:
    """The engine's grammar, what was bounded (for a person), and each engine line's line in the source."""

    text: str
    bounded: tuple[str, ...]
    source_lines: dict[int, int] = field(default_factory=dict)


# -- a small syntax tree of a grammar's definitions ----------------------------------------------------------


@dataclass
class Sym:
    name: str


@dataclass
class Lit:
    text: str  # "..." (maybe with i) or /.../flags, as written


@dataclass
class Range:
    low: str
    high: str


@dataclass
class Seq:
    items: list


@dataclass
class Alt:
    options: list


@dataclass
class Alias:
    expr: Any
    name: str


@dataclass
class Maybe:
    expr: Any


@dataclass
class Rep:
    expr: Any
    low: int
    high: int | None  # None: unbounded


@dataclass
class Intersect:
    """Strings both sides match (llguidance's ``&`` between terminals)."""

    left: Any
    right: Any


@dataclass
class Definition:
    name: str  # with its modifiers (?, !, _), as written
    is_token: bool
    body: Any
    line: int
    column: int

    @property
    def base(self) -> str:
        return self.name.lstrip("!?")


def derive(text: str, *, start: str = "start", limits: DecodingLimits = DecodingLimits(),
           source: str = "<grammar>") -> Derived:
    """The grammar to decode with; GrammarInvalid naming what the engine cannot represent."""
    definitions, ignored = _read(text, source)
    bounded: list[str] = []
    definitions = _inline_imports(definitions, source)
    for d in definitions:
        d.body = _bound(d.body, d, limits, bounded)
    if ignored:
        definitions = _with_ignored(definitions, ignored, limits, bounded)
    definitions = _unroll(definitions, limits.depth, bounded)
    if not any(d.base == start for d in definitions):
        raise _refuse(source, 1, 1, f"the start rule {start!r} derives no finite code", parser="nl2dsl")
    if start != "start":  # the engine starts at `start`
        if any(d.base == "start" for d in definitions):
            raise _refuse(source, 1, 1, f"a rule named 'start' besides the start rule {start!r} cannot be decoded",
                          parser="nl2dsl")
        definitions.insert(0, Definition("start", False, Sym(start), 0, 0))
    # vLLM hands grammars to llguidance as "lark or GBNF" and takes a grammar for GBNF unless a line starts with
    # `start:` or `%llguidance`; `?start:` would not do: say which it is.
    lines, source_lines = ["%llguidance {}"], {}
    for d in definitions:
        source_lines[len(lines) + 1] = d.line
        lines.append(f"{d.name}: {_emit(d.body)}")
    return Derived("\n".join(lines) + "\n", tuple(bounded), source_lines)


# -- reading: lark's own grammar of Lark grammars ------------------------------------------------------------


@functools.cache
def _meta() -> lark.Lark:
    return lark.Lark.open_from_package("lark", "lark.lark", ("grammars",), parser="lalr", propagate_positions=True,
                                       maybe_placeholders=False)


def _refuse(source: str, line: int, column: int, what: str, *, parser: str = "llguidance") -> GrammarInvalid:
    """What the engine (llguidance) cannot decode with, or (``parser="nl2dsl"``) what the service will not read."""
    return GrammarInvalid(f"{source}:{line}:{column}: {what}",
                          detail={"source": source, "line": line, "column": column, "parser": parser})


def _read(text: str, source: str) -> tuple[list[Definition], list[tuple[Any, int, int]]]:
    """Definitions (imports as placeholders) and ``%ignore`` bodies, or GrammarInvalid for what cannot be decoded."""
    try:
        tree = _meta().parse(text)
    except lark.exceptions.UnexpectedInput as exc:
        raise GrammarInvalid(f"{source}:{exc.line}:{exc.column}: lark cannot read the grammar here",
                             detail={"source": source, "line": exc.line, "column": exc.column,
                                     "parser": "lark"}) from exc
    definitions: list[Definition] = []
    ignored: list[tuple[Any, int, int]] = []
    for item in tree.children:
        line, column = item.meta.line, item.meta.column
        kind = item.data
        if kind in ("rule", "token"):
            name, params, *rest = item.children
            if params.children:
                raise _refuse(source, line, column, "templates ({...} parameters) cannot be decoded by the engine")
            body = rest[-1]
            definitions.append(Definition(str(name), kind == "token", _node(body, source), line, column))
        elif kind == "ignore":
            ignored.append((_node(item.children[0], source), line, column))
        elif kind in ("import", "multi_import"):
            definitions.extend(_import_placeholders(item, source))
        else:  # declare, override_rule
            construct = {"declare": "%declare", "override_rule": "%override"}.get(str(kind), str(kind))
            raise _refuse(source, line, column, f"{construct} cannot be decoded by the engine")
    return definitions, ignored


def _node(tree: Any, source: str) -> Any:
    if isinstance(tree, lark.Token):
        return Lit(str(tree)) if tree.type in ("STRING", "REGEXP") else Sym(str(tree))
    kind, children = tree.data, tree.children
    if kind == "expansions":
        return Alt([_node(c, source) for c in children])
    if kind == "alias":
        return Alias(_node(children[0], source), str(children[1]))
    if kind == "expansion":
        return Seq([_node(c, source) for c in children])
    if kind == "maybe":
        return Maybe(_node(children[0], source))
    if kind == "literal":
        token = children[0]
        if token.type == "REGEXP":
            _check_regex(str(token), source, token.line, token.column)
        return Lit(str(token))
    if kind == "literal_range":
        return Range(str(children[0]), str(children[1]))
    if kind == "name":
        return Sym(str(children[0]))
    if kind == "expr":
        atom, *op = children
        if len(op) == 1 and op[0].type == "OP":
            low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[str(op[0])]
        else:
            low = int(op[0])
            high = int(op[1]) if len(op) > 1 else low
        return Rep(_node(atom, source), low, high)
    if kind == "template_usage":
        raise _refuse(source, tree.meta.line, tree.meta.column, "templates cannot be decoded by the engine")
    raise _refuse(source, tree.meta.line, tree.meta.column, f"nl2dsl cannot read {kind}", parser="nl2dsl")


_LAZY = re.compile(r"(?<!\\)(?:\\\\)*[*+?}]\?")


def _check_regex(literal: str, source: str, line: int, column: int) -> None:
    """Refuse what llguidance's regexes (Rust's) cannot do, naming the regex's position."""
    import llguidance

    body = literal[1:literal.rindex("/")]
    if _LAZY.search(re.sub(r"\[(?:\\.|[^\]])*\]", "", body)):
        raise _refuse(source, line, column, f"lazy quantifiers (*?, +?) cannot be decoded by the engine: {literal}")
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
        llguidance.grammar_from("lark", f"start: X\nX: {literal}\n"))
    if is_error:
        reason = " ".join(m for m in str(messages[0] if messages else "").splitlines()
                          if m.startswith("error:")) or "the engine cannot read this regex"
        raise _refuse(source, line, column, f"{reason.removeprefix('error: ')}: {literal}")


# -- imports -------------------------------------------------------------------------------------------------

# lark's common terminals whose definitions the engine cannot read (look-behind, lazy), written without them;
# each accepts the same strings (ESCAPED_STRING: a quote, escaped characters or any other but quote and
# newline, a quote; C_COMMENT: /* ... */ without */ inside).
_ENGINE_COMMON = {
    "ESCAPED_STRING": r'/"(\\[^\n]|[^"\\\n])*"/',
    "C_COMMENT": r"/\/\*([^*]|\*+[^*\/])*\*+\//",
}
_IMPORTED = "COMMON__"


def _import_placeholders(item: lark.Tree, source: str) -> list[Definition]:
    path = item.children[0]
    names = [str(c.children[0]) for c in path.children if isinstance(c, lark.Tree)]
    relative = isinstance(path.children[0], lark.Token) and path.children[0] == "."
    line, column = item.meta.line, item.meta.column
    if relative or (item.data == "import" and names[:-1] != ["common"]) or (
            item.data == "multi_import" and names != ["common"]):
        raise _refuse(source, line, column, "only `%import common.NAME` can be imported (both parsers ship it)",
                      parser="nl2dsl")
    if item.data == "import":
        alias = str(item.children[1].children[0]) if len(item.children) > 1 else names[-1]
        return [Definition(alias, True, Sym(_IMPORTED + names[-1]), line, column)]
    return [Definition(str(n.children[0]), True, Sym(_IMPORTED + str(n.children[0])), line, column)
            for n in item.children[1].children]


@functools.cache
def _common() -> dict[str, Any]:
    """lark's common terminals, those the engine cannot read replaced (with what they are built from)."""
    text = (importlib.resources.files("lark") / "grammars" / "common.lark").read_text()
    replaced = "|".join([*_ENGINE_COMMON, r"_STRING_\w+"])
    definitions, _ = _read(re.sub(rf"^(?:{replaced})\s*:.*$", "", text, flags=re.M), "common.lark")
    found = {d.base: d.body for d in definitions}
    found.update({name: Lit(regex) for name, regex in _ENGINE_COMMON.items()})
    return found


def _inline_imports(definitions: list[Definition], source: str) -> list[Definition]:
    """Replace ``COMMON__NAME`` references by definitions copied from lark's common grammar (and theirs)."""
    common, wanted, added = _common(), [], {}

    def rename(node: Any) -> Any:
        if isinstance(node, Sym) and node.name in common:
            wanted.append(node.name)
            return Sym(_IMPORTED + node.name)
        return _map(node, rename)

    needed = [d.body.name[len(_IMPORTED):] for d in definitions if isinstance(d.body, Sym)
              and d.body.name.startswith(_IMPORTED)]
    wanted.extend(needed)
    while wanted:
        name = wanted.pop()
        if name in added:
            continue
        if name not in common:
            line = next(d.line for d in definitions if isinstance(d.body, Sym) and d.body.name == _IMPORTED + name)
            raise _refuse(source, line, 1, f"common.{name} does not exist", parser="lark")
        added[name] = Definition(_IMPORTED + name, True, rename(common[name]), 0, 0)
    return definitions + list(added.values())


# -- bounding ------------------------------------------------------------------------------------------------


def _map(node: Any, f) -> Any:
    """``node`` with ``f`` applied to its children (not to itself)."""
    if isinstance(node, Seq):
        return Seq([f(i) for i in node.items])
    if isinstance(node, Alt):
        return Alt([f(o) for o in node.options])
    if isinstance(node, Alias):
        return Alias(f(node.expr), node.name)
    if isinstance(node, Maybe):
        return Maybe(f(node.expr))
    if isinstance(node, Rep):
        return Rep(f(node.expr), node.low, node.high)
    return node


def _bound(node: Any, d: Definition, limits: DecodingLimits, bounded: list[str]) -> Any:
    where = f"line {d.line}" if d.line else f"common.{d.base.removeprefix(_IMPORTED)}"
    if isinstance(node, Rep) and node.high is None:
        high = limits.terminal_repeat if d.is_token else limits.repeat
        bounded.append(f"{where} ({d.base}): {_emit(node)} at most {max(high, node.low)} times")
        node = Rep(node.expr, node.low, max(high, node.low))
    if isinstance(node, Lit) and node.text.startswith("/"):
        regex = _bound_regex(node.text, limits.terminal_repeat)
        if regex != node.text:
            bounded.append(f"{where} ({d.base}): {node.text} as {regex}")
        return Lit(regex)
    return _map(node, lambda child: _bound(child, d, limits, bounded))


_QUANTIFIER = re.compile(r"\\.|\[(?:\\.|[^\]])*\]|\{(\d+),\}|[*+]")


def _bound_regex(literal: str, limit: int) -> str:
    """``/.../flags`` with ``*``, ``+`` and ``{n,}`` quantifiers bounded to ``limit`` (classes, escapes kept)."""
    end = literal.rindex("/")

    def bound(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "*":
            return f"{{0,{limit}}}"
        if token == "+":
            return f"{{1,{limit}}}"
        if m.group(1) is not None:
            low = int(m.group(1))
            return f"{{{low},{max(low, limit)}}}"
        return token

    return "/" + _QUANTIFIER.sub(bound, literal[1:end]) + literal[end:]


def _with_ignored(definitions: list[Definition], ignored: list, limits: DecodingLimits,
                  bounded: list[str]) -> list[Definition]:
    """One optional ignored piece (at most ``ignored_chars``) before each token of every rule."""
    tokens = {d.base for d in definitions if d.is_token}
    line = ignored[0][1]
    body = Alt([_bound(node, Definition(IGNORED, True, node, line, col), limits, []) for node, line, col in ignored])
    piece = Definition(IGNORED, True, Intersect(body, Lit(f"/(?s:.){{1,{limits.ignored_chars}}}/")), line, 1)

    def before_tokens(node: Any) -> Any:
        if isinstance(node, (Lit, Range)) or (isinstance(node, Sym) and node.name in tokens):
            return Seq([Rep(Sym(IGNORED), 0, 1), node])
        return _map(node, before_tokens)

    bounded.append(f"line {line} (%ignore): at most one ignored piece of {limits.ignored_chars} characters "
                   "before each token")
    return [Definition(d.name, d.is_token, d.body if d.is_token else before_tokens(d.body), d.line, d.column)
            for d in definitions] + [piece]


# -- recursion -----------------------------------------------------------------------------------------------


def _references(node: Any) -> set[str]:
    if isinstance(node, Sym):
        return {node.name}
    found: set[str] = set()
    _map(node, lambda child: found.update(_references(child)) or child)
    return found


def _cycles(rules: dict[str, Definition]) -> list[set[str]]:
    """Strongly connected components of the rule graph that recurse (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for ref in _references(rules[name].body) & rules.keys():
            if ref not in index:
                visit(ref)
                low[name] = min(low[name], low[ref])
            elif ref in stack:
                low[name] = min(low[name], index[ref])
        if low[name] == index[name]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == name:
                    break
            if len(component) > 1 or name in _references(rules[name].body):
                components.append(component)

    for name in rules:
        if name not in index:
            visit(name)
    return components


def _unroll(definitions: list[Definition], depth: int, bounded: list[str]) -> list[Definition]:
    """Recursive rules copied ``depth`` levels deep (level 0 keeps the names); then what cannot finish goes."""
    rules = {d.base: d for d in definitions if not d.is_token}
    cycles = _cycles(rules)
    in_cycle = {name: cycle for cycle in cycles for name in cycle}
    out: list[Definition] = []
    for d in definitions:
        if d.base not in in_cycle:
            out.append(d)
            continue
        cycle = in_cycle[d.base]
        for level in range(depth + 1):

            def deeper(node: Any, level: int = level, cycle: set[str] = cycle) -> Any:
                if isinstance(node, Sym) and node.name in cycle:
                    return Sym(f"{node.name}__{level + 1}") if level < depth else Sym("")
                return _map(node, deeper)

            name = d.name if level == 0 else f"{d.name}__{level}"
            out.append(Definition(name, False, deeper(d.body), d.line, d.column))
    for cycle in cycles:
        bounded.append(f"rules {', '.join(sorted(cycle))} (recursive): at most {depth} levels deep")
    return _without_dead_ends(out)


def _without_dead_ends(definitions: list[Definition]) -> list[Definition]:
    """Drop what can derive no finite string (the deepest copies' recursive alternatives, and so on up)."""
    dead = {""}
    while True:
        bodies = {d.base: _prune(d.body, dead) for d in definitions}
        newly = {name for name, body in bodies.items() if body is None} - dead
        if not newly:
            break
        dead |= newly
    return [Definition(d.name, d.is_token, bodies[d.base], d.line, d.column) for d in definitions
            if bodies[d.base] is not None]


def _prune(node: Any, dead: set[str]) -> Any:
    """``node`` without references to ``dead`` rules; None if it cannot do without them."""
    if isinstance(node, Sym):
        return None if node.name in dead else node
    if isinstance(node, Seq):
        items = [_prune(i, dead) for i in node.items]
        return None if any(i is None for i in items) else Seq([i for i in items if i != Seq([])])
    if isinstance(node, Alt):
        options = [o for o in (_prune(o, dead) for o in node.options) if o is not None]
        return Alt(options) if options else None
    if isinstance(node, Alias):
        inner = _prune(node.expr, dead)
        return None if inner is None else Alias(inner, node.name)
    if isinstance(node, Maybe):
        inner = _prune(node.expr, dead)
        return Seq([]) if inner is None else Maybe(inner)
    if isinstance(node, Rep):
        inner = _prune(node.expr, dead)
        if inner is None:
            return Seq([]) if node.low == 0 else None
        return Rep(inner, node.low, node.high)
    return node


# -- writing -------------------------------------------------------------------------------------------------


def _emit(node: Any) -> str:
    if isinstance(node, Sym):
        return node.name
    if node == Seq([]):
        return '""'
    if isinstance(node, Intersect):
        return f"({_emit(node.left)}) & {_emit(node.right)}"
    if isinstance(node, Lit):
        return node.text
    if isinstance(node, Range):
        return f"{node.low}..{node.high}"
    if isinstance(node, Seq):
        return " ".join(f"({_emit(i)})" if isinstance(i, (Alt, Alias, Intersect)) else _emit(i) for i in node.items)
    if isinstance(node, Alt):
        return " | ".join(_emit(o) for o in node.options)
    if isinstance(node, Alias):
        return f"{_emit(node.expr)} -> {node.name}"
    if isinstance(node, Maybe):
        return f"[{_emit(node.expr)}]"
    if isinstance(node, Rep):
        atom = _emit(node.expr)
        if not isinstance(node.expr, (Sym, Lit, Maybe)):
            atom = f"({atom})"
        if (node.low, node.high) == (0, 1):
            return f"{atom}?"
        if node.high is None:
            return f"{atom}*" if node.low == 0 else f"{atom}+" if node.low == 1 else f"{atom}{{{node.low},}}"
        return f"{atom}{{{node.low}}}" if node.low == node.high else f"{atom}{{{node.low},{node.high}}}"
    raise TypeError(node)
