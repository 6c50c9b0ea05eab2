"""Grammars: every shipped DSL compiles for both parsers, is bounded, and parse errors say where."""

from __future__ import annotations

import pytest

from service.config import Settings
from service.errors import GrammarInvalid
from service.grammars import Catalog, GrammarRegistry, compile_grammar

REGISTRY = GrammarRegistry(Settings().grammars_dir).load()


def test_the_two_dsls_ship():
    assert {"flow", "sql"} <= set(REGISTRY.names())


@pytest.mark.parametrize("name", REGISTRY.names())
def test_shipped_grammar_is_bounded_as_written_and_its_examples_parse(name):
    grammar = REGISTRY.get(name)
    assert grammar.bounded == ()  # the engine decodes the grammar as written: nothing needed a bound
    assert grammar.examples, "each DSL ships few-shot examples"
    for example in grammar.examples:
        result = grammar.parse(example.code)
        assert result.valid, (example.code, result.error)


def test_flow_catalog_has_at_least_12_connectors_with_typed_parameters():
    catalog = REGISTRY.get("flow").catalog
    assert len({op.connector for op in catalog.operations}) >= 12
    assert {p.type for op in catalog.operations for p in op.params} >= {"text", "email", "number", "time"}


def test_flow_rejects_operations_and_keys_not_in_the_catalog():
    flow = REGISTRY.get("flow")
    ok = 'when forms.submitted(form: "Leads")\nthen chat.post_message(channel: "#sales", text: "hi")'
    assert flow.parse(ok).valid
    assert not flow.parse(ok.replace("chat.post_message", "chat.send_message")).valid
    assert not flow.parse(ok.replace("channel:", "room:")).valid
    assert not flow.parse('when forms.submitted(form: "Leads")').valid  # at least one action
    five = ok + "".join('\nthen log.write(message: "x")' for _ in range(4))
    assert not flow.parse(five).valid  # at most four actions


def test_sql_accepts_the_query_shapes_of_the_issue():
    sql = REGISTRY.get("sql")
    for query in [
        "SELECT name, price FROM products WHERE price > 10 AND category = 'toys' OR stock = 0 ORDER BY price LIMIT 5",
        "SELECT department, COUNT(*) AS n, AVG(salary) FROM employees GROUP BY department",
        "SELECT customers.name, SUM(orders.total) FROM customers JOIN orders ON customers.id = orders.customer_id"
        " GROUP BY customers.name",
    ]:
        assert sql.parse(query).valid, sql.parse(query).error
    assert not sql.parse("DELETE FROM products").valid
    assert not sql.parse("SELECT * FROM products;").valid


def test_parse_error_gives_line_column_and_readable_expectations():
    result = REGISTRY.get("flow").parse('when forms.submitted(form: "x")\nthen chat.post(channel: "#a")')
    assert not result.valid
    assert (result.error.line, result.error.column) == (2, 6)
    assert '"chat.post_message("' in result.error.expected


def test_truncated_code_points_past_its_end():
    result = REGISTRY.get("sql").parse("SELECT name FROM products WHERE")
    assert not result.valid and result.error.line == 1


def test_a_grammar_with_tilde_lists_compiles_for_both_parsers():
    text = 'start: pair ~ 1..3\npair: KEY "=" VALUE "\\n"\nKEY: /[a-z]{1,8}/\nVALUE: /[0-9]{1,4}/'
    grammar = compile_grammar("kv", text)
    assert grammar.parse("a=1\nb=2\n").valid
    assert "pair{1,3}" in grammar.engine_text  # lark's `~ 1..3` in the engine's dialect


@pytest.mark.parametrize("name", ["flow", "sql"])
def test_every_test_set_program_can_be_decoded_by_the_engine(name):
    """The engine's greedy lexer must be able to write what lark reads: a literal "COUNT(DISTINCT " once made
    COUNT(*) impossible to generate (the lexer, having read "COUNT(", only continued the literal)."""
    import json

    import llguidance

    grammar, tokenizer = REGISTRY.get(name), llguidance.LLTokenizer("byte")
    rows = [json.loads(line) for line in (Settings().data_dir / name / "test.jsonl").open()]
    undecodable = []
    for row in rows:
        matcher = llguidance.LLMatcher(tokenizer, llguidance.grammar_from("lark", grammar.engine_text), log_level=0)
        if not (matcher.consume_tokens(tokenizer.tokenize_str(row["code"])) and matcher.is_accepting()):
            undecodable.append(row["code"])
    assert len(rows) >= 500 and undecodable == []


def test_a_grammar_lark_cannot_compile_is_refused_with_its_source():
    with pytest.raises(GrammarInvalid) as err:
        compile_grammar("bad", 'start: "a" undefined_rule', source="bad.lark")
    assert "bad.lark" in err.value.message and err.value.detail["parser"] == "lark"


def test_registry_stops_at_a_broken_grammar_file(tmp_path):
    (tmp_path / "broken.lark").write_text('start: "a"\nrule: (\n')
    with pytest.raises(GrammarInvalid) as err:
        GrammarRegistry(tmp_path).load()
    assert "broken.lark" in err.value.message


def test_catalog_with_only_optional_parameters_allows_any_subset_in_order():
    catalog = Catalog.from_dict(
        {
            "types": {"text": "TEXT"},
            "connectors": {
                "mail": {
                    "triggers": {"received": {"sender": {"type": "text"}, "subject": {"type": "text"}}},
                    "actions": {"send": {"to": {"type": "text", "required": True}}},
                }
            },
        }
    )
    text = 'start: "when " trigger_call "\\nthen " action_call\nTEXT: /"[a-z]{1,8}"/\n' + catalog.grammar_rules()
    grammar = compile_grammar("mini", text)
    for trigger in ['mail.received()', 'mail.received(sender: "a")', 'mail.received(subject: "b")',
                    'mail.received(sender: "a", subject: "b")']:
        assert grammar.parse(f'when {trigger}\nthen mail.send(to: "x")').valid, trigger
    assert not grammar.parse('when mail.received(subject: "b", sender: "a")\nthen mail.send(to: "x")').valid
    assert not grammar.parse('when mail.received()\nthen mail.send()').valid  # `to` is required


def test_catalog_rejects_unknown_types_and_bad_names():
    with pytest.raises(GrammarInvalid):
        Catalog.from_dict({"types": {}, "connectors": {"x": {"actions": {"a": {"p": {"type": "nope"}}}}}})
    with pytest.raises(GrammarInvalid):
        Catalog.from_dict({"types": {}, "connectors": {"Bad Name": {}}})


def test_an_undefined_rule_is_reported_at_the_rule_that_uses_it():
    with pytest.raises(GrammarInvalid) as err:
        compile_grammar("bad", '// a comment\nstart: "a" missing\n', source="bad.lark")
    assert err.value.detail["line"] == 2 and "missing" in err.value.message
