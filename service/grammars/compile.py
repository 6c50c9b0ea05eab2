"""Compile a grammar for both parsers that read it: lark (which parses outputs) and the engine's llguidance.

The grammar is kept as written for lark; the engine decodes with a grammar derived from it in which what can
run away is bounded (:mod:`service.grammars.bounds`), narrowed to a tenant's policy where it has one. The
engine's own check answers ``(is_error, messages)``: errors refuse the grammar with the engine's reason and
the line it comes from; warnings let it through and are reported to whoever uploaded it.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass

import lark

from service import metrics
from service.errors import GrammarInvalid
from service.grammars.bounds import DecodingLimits, derive
from service.grammars.catalog import Catalog
from service.grammars.comparison import Comparison
from service.grammars.examples import Example
from service.grammars.grammar import Grammar, Origin
from service.policy import Policy

__all__ = ["Checked", "check_grammar", "compile_grammar"]


@dataclass(frozen=True)
class Checked:
    """A grammar both parsers accept: lark's parser, the engine's text, what was bounded, the engine's warnings."""

    parser: lark.Lark
    engine_text: str
    bounded: tuple[str, ...]
    warnings: tuple[str, ...]
    seconds: float


def check_grammar(text: str, *, start: str = "start", source: str = "<grammar>",
                  limits: DecodingLimits | None = None, decoding_text: str | None = None,
                  policy: Policy | None = None) -> Checked:
    """Derive the engine's grammar, compile ``text`` with lark, check the engine's; GrammarInvalid saying where not.

    ``decoding_text``: what the engine decodes when it is narrower than ``text`` (a catalog less denied
    operations); ``policy``: narrows the derived grammar's e-mail, URL and method terminals.
    """
    started = time.perf_counter()
    # First, from the text alone (no file is read): refuses imports other than lark's common grammar.
    derived = derive(decoding_text or text, start=start, limits=limits or DecodingLimits(), source=source)
    try:
        parser = lark.Lark(text, start=start, parser="earley", lexer="dynamic")
    except lark.exceptions.LarkError as exc:
        raise GrammarInvalid(
            f"{source}: lark cannot compile the grammar: {exc}".strip(),
            detail={"source": source, "line": _lark_error_line(exc, text), "column": _column(exc), "parser": "lark"},
        ) from exc
    engine_text = policy.narrow(derived.text) if policy is not None else derived.text
    warnings = _engine_check(engine_text, source, derived.source_lines)
    return Checked(parser, engine_text, derived.bounded, warnings, time.perf_counter() - started)


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
    limits: DecodingLimits | None = None,
    decoding_text: str | None = None,
    policy: Policy | None = None,
    compare: Comparison | None = None,
) -> Grammar:
    """Compile a grammar the operator wrote (shipped or a tenant variant) into a :class:`Grammar` with a parser.

    ``origin``: "shipped" or "tenant" (default: "tenant" for tenant variants, else "shipped").
    """
    origin = origin or ("tenant" if tenant else "shipped")
    checked = _check_operator_grammar(text, start, source, limits, decoding_text, policy, origin)
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
        limits=limits or DecodingLimits(),
        bounded=checked.bounded,
        warnings=checked.warnings,
        compare=_checked_comparison(compare, text, source),
    )


def _checked_comparison(compare: Comparison | None, text: str, source: str) -> Comparison:
    """``compare`` (default: none declared), GrammarInvalid if it names rules ``text`` does not have."""
    compare = compare or Comparison()
    if problems := compare.check(text):
        raise GrammarInvalid(f"{source}: {problems[0]}", detail={"source": source, "messages": problems})
    return compare


@functools.lru_cache(maxsize=64)
def _check_operator_grammar(text: str, start: str, source: str, limits: DecodingLimits | None,
                            decoding_text: str | None, policy: Policy | None, origin: Origin) -> Checked:
    """``check_grammar`` once per process for the same grammar, policy and limits (a bounded cache).

    Grammars the operator wrote (shipped ones and tenants' variants) are compiled again on every registry load:
    at start-up and by every app a process builds (the unit tests build hundreds). The service compiles uploads
    in its sandbox, not here, so no tenant's grammar is held by it. A grammar lark or the engine refuses raises,
    and is not cached.
    """
    checked = check_grammar(text, start=start, source=source, limits=limits, decoding_text=decoding_text,
                            policy=policy)
    metrics.GRAMMAR_COMPILE.labels(origin).observe(checked.seconds)
    return checked


def _engine_check(engine_text: str, source: str, source_lines: dict[int, int]) -> tuple[str, ...]:
    """The engine's own grammar check (no tokenizer): GrammarInvalid on errors; the warnings otherwise."""
    import llguidance

    grammar = llguidance.grammar_from("grammar", engine_text)  # as vLLM hands it over
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    messages = [messages] if isinstance(messages, str) else list(messages)
    if not is_error:
        return tuple(messages)
    first = messages[0] if messages else "rejected"
    position = re.match(r"at (\d+)\((\d+)\): ", first)
    lines = first[position.end():].splitlines() if position else first.splitlines()
    # The first line says what; an "error:" line of a regex error says why; the rest quotes the grammar.
    reason = " ".join([lines[0], *(line.strip() for line in lines[1:] if line.startswith("error:"))])
    line = source_lines.get(int(position.group(1))) if position else None
    raise GrammarInvalid(
        f"{source}: the engine (llguidance) cannot decode with this grammar: {reason}",
        detail={"source": source, "parser": "llguidance", "line": line, "column": None, "messages": messages},
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
