"""Compile a grammar for both parsers that read it, and translate between their dialects.

Every grammar is checked by ``lark`` (which parses outputs) and by the engine's ``llguidance`` (which
constrains decoding). The dialects differ in bounded repetition, translated once by :func:`to_engine_dialect`.
llguidance's check answers ``(is_error, messages)``: errors refuse the grammar with the engine's reason, line
and column; warnings let it through and are reported to whoever uploaded it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import lark

from service import metrics
from service.errors import GrammarInvalid
from service.grammars.catalog import Catalog
from service.grammars.examples import Example
from service.grammars.grammar import Grammar, Origin

__all__ = ["Checked", "check_grammar", "compile_grammar", "to_engine_dialect", "unbounded_constructs"]


# `item ~ 2..4` (lark) is `item{2,4}` for the engine's llguidance 1.7 (docs/PLATFORM.md); `item ~ 3` is
# `item{3}`. Strings and regex literals are skipped so a `~` inside them is left alone.
_LITERAL = r'"(?:[^"\\\n]|\\.)*"i?|/(?:[^/\\\n]|\\.)+/[imslux]*'
_TILDE = re.compile(rf"({_LITERAL})|~\s*(\d+)(?:\s*\.\.\s*(\d+))?")
# What both parsers can import: lark's `common` grammar (llguidance ships its own copy of it).
_IMPORT = re.compile(r"^[ \t]*%import[ \t]+([.\w]+)[ \t]*(\()?", re.MULTILINE)


def to_engine_dialect(text: str) -> str:
    """Translate lark's bounded repetition to the ``{n,m}`` form that the engine's llguidance reads."""

    def _replace(m: re.Match[str]) -> str:
        if m.group(1):
            return m.group(1)
        low, high = m.group(2), m.group(3)
        return f"{{{low},{high}}}" if high else f"{{{low}}}"

    return _TILDE.sub(_replace, text)


@dataclass(frozen=True)
class Checked:
    """A grammar both parsers accept: lark's parser, the engine's text, and the engine's warnings."""

    parser: lark.Lark
    engine_text: str
    warnings: tuple[str, ...]
    seconds: float


def check_grammar(text: str, *, start: str = "start", source: str = "<grammar>",
                  decoding_text: str | None = None) -> Checked:
    """Compile ``text`` with lark and check its engine form with llguidance; GrammarInvalid saying where not.

    ``decoding_text``: the grammar for constrained decoding when it is narrower than ``text`` (a policy).
    """
    started = time.perf_counter()
    _refuse_unbounded(text, source)
    _refuse_imports(text, source)
    try:
        parser = lark.Lark(text, start=start, parser="earley", lexer="dynamic")
    except lark.exceptions.LarkError as exc:
        raise GrammarInvalid(
            f"{source}: lark cannot compile the grammar: {exc}".strip(),
            detail={"source": source, "line": _lark_error_line(exc, text), "column": _column(exc), "parser": "lark"},
        ) from exc
    engine_text = to_engine_dialect(decoding_text or text)
    warnings = _engine_check(engine_text, source)
    return Checked(parser, engine_text, warnings, time.perf_counter() - started)


def compile_grammar(
    name: str,
    text: str,
    *,
    source: str = "<grammar>",
    start: str = "start",
    description: str = "",
    examples: tuple[Example, ...] = (),
    catalog: Catalog | None = None,
    tenant: str | None = None,
    structure: str | None = None,
    origin: Origin | None = None,
    decoding_text: str | None = None,
) -> Grammar:
    """Compile a grammar the operator wrote (shipped or a tenant variant) into a :class:`Grammar` with a parser.

    ``origin``: "shipped" or "tenant" (default: "tenant" for tenant variants, else "shipped").
    """
    origin = origin or ("tenant" if tenant else "shipped")
    checked = check_grammar(text, start=start, source=source, decoding_text=decoding_text)
    metrics.GRAMMAR_COMPILE.labels(origin).observe(checked.seconds)
    return Grammar(
        name=name,
        description=description,
        text=text,
        engine_text=checked.engine_text,
        parser=checked.parser,
        examples=examples,
        catalog=catalog,
        tenant=tenant,
        structure=text if structure is None else structure,
        start=start,
        origin=origin,
        warnings=checked.warnings,
    )


def unbounded_constructs(text: str) -> list[tuple[int, str]]:
    """Lines of ``text`` with an unbounded repetition (``*``, ``+``, ``{n,}``) or ``%ignore``.

    A weak model under an unbounded grammar can run an identifier or a list until max_tokens (docs/PLATFORM.md).
    """
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("%ignore"):
            found.append((number, "%ignore lets whitespace repeat without bound"))
            continue
        for m in re.finditer(_LITERAL + r"|//.*$|[*+]", line):
            token = m.group(0)
            if token.startswith("//"):
                break
            if token in ("*", "+"):
                found.append((number, f"unbounded '{token}' in a rule"))
            elif token.startswith("/"):
                body = re.sub(r"\\.|\[(?:\\.|[^\]])*\]", "", token[1:token.rindex("/")])
                if re.search(r"[*+]|\{\d+,\}", body):
                    found.append((number, f"unbounded repetition in regex {token}"))
    return found


def _refuse_unbounded(text: str, source: str) -> None:
    unbounded = unbounded_constructs(text)
    if unbounded:
        line, what = unbounded[0]
        raise GrammarInvalid(
            f"{source}:{line}: {what}; bound every repetition (e.g. /[a-z]{{1,32}}/ or item ~ 0..4) and spell "
            "whitespace out, so generation cannot run to max_tokens",
            detail={"source": source, "line": line, "parser": "nl2dsl", "problems": [w for _, w in unbounded]},
        )


def _refuse_imports(text: str, source: str) -> None:
    """Only lark's ``common`` grammar may be imported: another import would read files of the server."""
    for m in _IMPORT.finditer(text):
        path = m.group(1)
        module = path if m.group(2) else path.rpartition(".")[0]  # `common (A, B)` or `common.A`
        if module != "common":
            line = text.count("\n", 0, m.start()) + 1
            raise GrammarInvalid(
                f"{source}:{line}: only `%import common.NAME` can be imported (both parsers ship it)",
                detail={"source": source, "line": line, "parser": "nl2dsl"},
            )


def _engine_check(engine_text: str, source: str) -> tuple[str, ...]:
    """The engine's own grammar check (no tokenizer): GrammarInvalid on errors; the warnings otherwise."""
    import llguidance

    grammar = llguidance.grammar_from("lark", engine_text)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    messages = [messages] if isinstance(messages, str) else list(messages)
    if not is_error:
        return tuple(messages)
    first = messages[0] if messages else "rejected"
    position = re.match(r"at (\d+)\((\d+)\): ", first)
    lines = first[position.end():].splitlines() if position else first.splitlines()
    # The first line says what; an "error:" line of a regex error says why; the rest quotes the grammar.
    reason = " ".join([lines[0], *(line.strip() for line in lines[1:] if line.startswith("error:"))])
    raise GrammarInvalid(
        f"{source}: the engine (llguidance) cannot decode with this grammar: {reason}",
        detail={"source": source, "parser": "llguidance", "line": int(position.group(1)) if position else None,
                "column": int(position.group(2)) if position else None, "messages": messages},
    )


def _lark_error_line(exc: Exception, text: str) -> int | None:
    line = getattr(exc, "line", None)
    if isinstance(line, int) and line > 0:
        return line
    found = _first_line_number(str(exc))
    rule = re.search(r"\(in rule (\w+)\)", str(exc)) or re.search(r"[Rr]ule '?(\w+)'? ", str(exc))
    if found is None and rule:  # e.g. "Rule 'b' used but not defined (in rule start)": the line of that rule
        name = rule.group(1)
        for number, source_line in enumerate(text.splitlines(), start=1):
            if re.match(rf"\s*[?!]?{re.escape(name)}\s*(\.\d+)?\s*:", source_line):
                return number
    return found


def _column(exc: Exception) -> int | None:
    column = getattr(exc, "column", None)
    return column if isinstance(column, int) and column > 0 else None


def _first_line_number(message: str) -> int | None:
    m = re.search(r"line (\d+)", message) or re.search(r"\((\d+):\d+\)", message) or re.search(r"^(\d+):", message)
    return int(m.group(1)) if m else None
