"""The engine's grammar derived from a grammar as written: bounded, a subset of what lark parses, refusals named."""

from __future__ import annotations

import importlib.resources

import lark
import llguidance
import pytest

from service.errors import GrammarInvalid
from service.grammars import DecodingLimits, check_grammar, derive

TOKENIZER = llguidance.LLTokenizer("byte")
OUTLINES_JSON = (importlib.resources.files("outlines") / "grammars" / "json.lark").read_text()
OUTLINES_ARITHMETIC = (importlib.resources.files("outlines") / "grammars" / "arithmetic.lark").read_text()


def decodable(engine_text: str, code: str) -> bool:
    """Whether constrained decoding (the engine's llguidance, fed byte by byte) can write ``code``."""
    matcher = llguidance.LLMatcher(TOKENIZER, llguidance.grammar_from("lark", engine_text), log_level=0)
    return bool(matcher.consume_tokens(TOKENIZER.tokenize_str(code))) and matcher.is_accepting()


@pytest.mark.parametrize("grammar, codes", [
    (OUTLINES_JSON, ['{"a": [1, -2.5e3, {"b": null}], "c": "x\\"y"}', "[]", '"\\u00e9"', "[1,\n  2]"]),
    (OUTLINES_ARITHMETIC, ["1+2*3", "(1 + 2) * -3", "4/2-1"]),
])
def test_real_grammars_derive_a_grammar_that_writes_what_lark_reads(grammar, codes):
    engine = check_grammar(grammar).engine_text
    parser = lark.Lark(grammar)
    for code in codes:
        assert decodable(engine, code), code
        assert parser.parse(code) is not None


def test_what_can_run_away_is_bounded_and_reported():
    # depth counts passes through recursive rules: one JSON nesting is two (array -> value -> array)
    limits = DecodingLimits(repeat=3, terminal_repeat=5, ignored_chars=2, depth=4)
    derived = derive(OUTLINES_JSON, limits=limits)
    assert decodable(derived.text, "[1, 2, 3, 4]")  # first item + 3 repeats
    assert not decodable(derived.text, "[1, 2, 3, 4, 5]")  # a fifth would need a fourth repeat
    assert decodable(derived.text, '"abcde"') and not decodable(derived.text, '"abcdef"')
    assert decodable(derived.text, "[1,  2]") and not decodable(derived.text, "[1,   2]")  # ignored: 2 characters
    assert decodable(derived.text, "[[1]]") and not decodable(derived.text, "[[[1]]]")  # nesting
    assert lark.Lark(OUTLINES_JSON).parse("[[[[1, 2, 3, 4, 5]]]]")  # the parser reads all of it, as written
    report = " ".join(derived.bounded)
    for what in ("at most 3 times", "%ignore", "recursive", "common.ESCAPED_STRING"):
        assert what in report, (what, derived.bounded)


def test_priorities_only_choose_between_parses_and_are_dropped_for_the_engine():
    checked = check_grammar('start: a | b\na.2: "x"\nb: "x" | "y"\n')
    assert ".2" not in checked.engine_text and decodable(checked.engine_text, "y")


@pytest.mark.parametrize("grammar, line, column, construct", [
    ("start: X\nX: /a(?=b)/\n", 2, 4, "look-around"),
    ("start: X\nX: /a*?/\n", 2, 4, "lazy"),
    ('%declare FOO\nstart: "a"\n', 1, 1, "%declare"),
    ('start: pair{"a"}\npair{x}: x x\n', 1, 8, "templates"),
])
def test_what_the_engine_cannot_represent_is_refused_naming_construct_line_and_column(grammar, line, column,
                                                                                      construct):
    with pytest.raises(GrammarInvalid) as refused:
        check_grammar(grammar, source="mine.lark")
    detail = refused.value.detail
    assert (detail["line"], detail["column"], detail["parser"]) == (line, column, "llguidance"), detail
    assert construct in refused.value.message and "mine.lark" in refused.value.message


def test_a_grammar_whose_recursion_never_ends_is_refused():
    with pytest.raises(GrammarInvalid, match="derives no finite code"):
        check_grammar('start: "(" start ")"\n')


def test_the_engine_reads_the_derived_grammar_as_lark_whatever_its_start_rule_is_called():
    """vLLM hands grammars over as "lark or GBNF"; a first rule `?start:` or `query:` once read as GBNF."""
    for grammar, start in (('?start: x\nx: "a"\n', "start"), ('query: "SELECT " NAME\nNAME: /[a-z]+/\n', "query")):
        engine = check_grammar(grammar, start=start).engine_text
        assert decodable(engine, "a" if start == "start" else "SELECT abc")
        is_error, _ = llguidance.LLMatcher.validate_grammar_with_warnings(llguidance.grammar_from("grammar", engine))
        assert not is_error

