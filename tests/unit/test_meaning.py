"""Meaning-level scores: the canonical form a DSL's ``compare`` declares, and the semantic plug-ins (sql, cron,
regex) on programs written differently that mean the same, and on near misses that do not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from service.config import PROJECT_ROOT, Settings
from service.errors import GrammarInvalid
from service.evaluation.meaning import MAX_REGEX_CHARS, match, same_cron, same_regex, same_sql
from service.evaluation.runner import Outcome, RunConfig, summarize
from service.grammars import Comparison, GrammarRegistry, compile_grammar
from service.onboarding.pipeline import _gate

SQL = GrammarRegistry(Settings().grammars_dir).load().get("sql")
SCHEMA = "customers(id, country, segment, credit_limit, visits); orders(id, status, channel, customer_id, total)"
LOGQ = (PROJECT_ROOT / "data/onboarding/logq/logq.lark").read_text()
CRON = (PROJECT_ROOT / "data/onboarding/cron/cron.lark").read_text()


def _logq(**compare):
    return compile_grammar("logq", LOGQ, origin="upload", compare=Comparison(**compare))


def test_unordered_rules_compare_equal_in_any_order_and_literals_never_do():
    ordered, unordered = _logq(), _logq(unordered=["selector", "count"])
    a = '{app="billing", env="dev"} | count by user_id, path'
    b = '{env="dev", app="billing"} | count by path, user_id'
    assert not match(ordered, a, b).canonical and match(unordered, a, b).canonical
    assert not match(unordered, a, '{env="dev", app="billinh"} | count by path, user_id').canonical
    # Literals normalized: spacing inside quotes and how a number is written; case only when declared.
    assert match(_logq(), '{app="a  b"} | where n == 5', '{app="a b"} | where n == 5.0').canonical
    assert not match(_logq(), '{app="Auth"}', '{app="auth"}').canonical
    assert match(_logq(fold_case=True), '{app="Auth"}', '{app="auth"}').canonical


def test_a_declaration_naming_a_rule_the_grammar_lacks_is_refused_and_bounds_hold():
    with pytest.raises(GrammarInvalid) as refused:
        _logq(unordered=["selectr"])
    assert "selectr" in refused.value.message
    with pytest.raises(ValidationError):
        Comparison(unordered=[f"r{i}" for i in range(65)])
    with pytest.raises(ValidationError):
        Comparison(semantic="python")


@pytest.mark.parametrize(("code", "gold", "same"), [
    ("SELECT country, COUNT(*) FROM customers GROUP BY country",
     "SELECT country, COUNT(id) FROM customers GROUP BY country", True),  # id is never NULL
    ("SELECT * FROM customers WHERE credit_limit > 9", "SELECT * FROM customers WHERE credit_limit >= 10", False),
    ("SELECT segment FROM customers WHERE visits > 2 AND credit_limit < 50",
     "SELECT segment FROM customers WHERE credit_limit < 50 AND visits > 2", True),
    ("SELECT segment FROM customers WHERE visits > 2 OR credit_limit < 50",
     "SELECT segment FROM customers WHERE credit_limit < 50 AND visits > 2", False),
    ("SELECT country FROM customers ORDER BY visits DESC LIMIT 5",
     "SELECT country FROM customers ORDER BY visits ASC LIMIT 5", False),
    ("SELECT customers.country, orders.total FROM customers JOIN orders ON customers.id = orders.customer_id",
     "SELECT customers.country, orders.total FROM orders JOIN customers ON orders.customer_id = customers.id", True),
])
def test_sql_meaning_is_the_rows_on_fixture_databases(code, gold, same):
    assert same_sql(code, gold, SCHEMA) is same
    assert match(SQL, code, gold, context=SCHEMA).semantic is same


def test_sql_that_does_not_run_or_writes_is_never_the_same():
    assert not same_sql("SELECT nope FROM customers", "SELECT country FROM customers", SCHEMA)
    assert not same_sql("DELETE FROM customers", "DELETE FROM customers", SCHEMA)
    assert not same_sql("SELECT 1", "SELECT 1", None)  # no schema: nothing to run on


@pytest.mark.parametrize(("code", "gold", "same"), [
    ("0 9 * * 1-5", "0 9 * * 1,2,3,4,5", True),
    ("0 9 * * 0", "0 9 * * 7", True),  # Sunday, both ways
    ("*/15 * * * *", "0,15,30,45 * * * *", True),
    ("* * * * *", "* * * 1 *", False),  # the same for the first days of January only
    ("0 0 1-31 * 1", "0 0 * * 1", False),  # both day fields restricted: either fires
    ("5 4 * * *", "4 5 * * *", False),
])
def test_cron_meaning_is_when_it_fires(code, gold, same):
    assert same_cron(code, gold) is same


def test_regex_meaning_is_the_language_within_a_bound():
    assert same_regex("a(b|c)*", "a(c|b)*") and same_regex("[0-9]+", r"\d\d*")
    assert not same_regex("ab*", "ab+") and not same_regex("(", "(")
    assert not same_regex("a" * (MAX_REGEX_CHARS + 1), "a" * (MAX_REGEX_CHARS + 1))


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80), st.text(max_size=80), st.one_of(st.none(), st.text(max_size=120)))
def test_hostile_programs_never_raise_from_any_plug_in(code, gold, context):
    for same in (same_sql, same_cron, same_regex):
        assert same(code, gold, context) in (True, False)


def test_the_gate_judges_on_the_strongest_score_the_dsl_declares():
    cron = compile_grammar("cron", CRON, origin="upload", compare=Comparison(semantic="cron"))

    def summary(right: int) -> object:  # `right` outputs mean the gold schedule, written another way
        return summarize([Outcome("0 9 * * 1-5", "0 9 * * 1,2,3,4,5" if i < right else "0 9 * * *", True, "stop",
                                  1.0) for i in range(30)], cron)

    base, adapter = summary(2), summary(20)
    assert base.exact_match == adapter.exact_match == 0 and adapter.semantic_match == 20 / 30
    published, why = _gate([(RunConfig("base", "cron", adapter="base"), base),
                            (RunConfig("adapter", "cron", adapter="c"), adapter)], margin=0.1, alpha=0.05)
    assert published and why.startswith("semantic match") and "18 pairs won, 0 lost" in why


_JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
                     lambda inner: st.one_of(st.lists(inner, max_size=70), st.dictionaries(st.text(max_size=12), inner,
                                                                                         max_size=4)), max_leaves=80)


@settings(max_examples=150, deadline=None)
@given(st.one_of(_JSON, st.fixed_dictionaries({}, optional={"unordered": _JSON, "fold_case": _JSON,
                                                             "semantic": _JSON})), st.text(max_size=300))
def test_any_compare_declaration_is_a_bounded_model_or_refused(value, grammar_text):
    """What a tenant sends as ``compare``: a typed, bounded declaration, or a validation error (a 422)."""
    try:
        compare = Comparison.model_validate(value)
    except ValidationError:
        return
    assert len(compare.unordered) <= 64 and compare.semantic in (None, "sql", "cron", "regex")
    assert all(isinstance(problem, str) for problem in compare.check(grammar_text))


def test_either_quotes_make_one_string_and_nl2bash_reads_as_pairs(tmp_path):
    from service.demo_data.nl2bash import write_pairs

    bash = compile_grammar("bash", (PROJECT_ROOT / "data/onboarding/bash/bash.lark").read_text(), origin="upload")
    assert match(bash, "find . -name '*.txt'", 'find . -name "*.txt"').canonical
    assert not match(bash, "find . -name '*.txt'", "find . -name *.txt").canonical  # a glob the shell expands
    assert not match(bash, "ls -l | wc -l", "wc -l | ls -l").canonical
    (tmp_path / "all.nl").write_text("list files\n\ncount lines\n")
    (tmp_path / "all.cm").write_text("ls\nls -a\nwc -l\n")
    assert write_pairs(tmp_path, tmp_path / "pairs.jsonl") == (2, 1)
    assert (tmp_path / "pairs.jsonl").read_text().splitlines()[1] == '{"text": "count lines", "code": "wc -l"}'
    (tmp_path / "all.cm").write_text("ls\n")
    with pytest.raises(ValueError, match="not pairs"):
        write_pairs(tmp_path, tmp_path / "pairs.jsonl")


def test_nl2bash_templates_keep_utilities_flags_and_structure_and_replace_every_argument():
    """NL2Bash's second measure: two commands with the same template differ only in their arguments."""
    from service.demo_data.nl2bash import template

    bash = compile_grammar("bash", (PROJECT_ROOT / "data/onboarding/bash/bash.lark").read_text(), origin="upload")

    def same(a: str, b: str) -> bool:
        return template(bash.parse(a).tree) == template(bash.parse(b).tree)

    assert same("find . -name '*.txt' | xargs rm -f", 'find /tmp -name "*.log" | xargs rm -f')
    assert same("cat a.txt 2>/dev/null", "cat notes 2>/tmp/err")
    assert same("echo $(ls -l foo)", "echo $(ls -l /var/log)")
    assert not same("ls -l /var", "ls -la /var")  # another flag
    assert not same("ls -l /var", "du -l /var")  # another utility
    assert not same("find . -name x | wc -l", "find . -name x")  # another pipeline
    assert not same("echo $(ls -l foo)", "echo $(du -l foo)")  # another command inside a substitution
    assert template(bash.parse("X=3 grep -r foo .").tree).count("ARG") == 3


def test_a_summary_keeps_each_answer_in_the_order_of_the_pairs():
    outcomes = [Outcome(gold="ls -l", code=code, valid=True, finish_reason="stop", latency_s=0.1)
                for code in ("ls -l", "ls -a", "")]
    assert summarize(outcomes).outputs == ("ls -l", "ls -a", "")
