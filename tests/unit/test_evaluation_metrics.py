"""Evaluation metrics on hand-made cases with known answers."""

from __future__ import annotations

import pytest

from service.config import Settings
from service.evaluation.metrics import exact_match, hallucinations, string_similarity, tree_similarity
from service.grammars import GrammarRegistry

GRAMMARS = GrammarRegistry(Settings().grammars_dir).load()
FLOW = GRAMMARS.get("flow")
SQL = GRAMMARS.get("sql")

GOLD = ('when forms.submitted(form: "Contact us")\n'
        'then chat.post_message(channel: "#sales", text: "New lead")\n'
        'then email.send(to: "sales@example.com", subject: "New lead")')
REORDERED = ('when forms.submitted(form: "Contact us")\n'
             'then email.send(to: "sales@example.com", subject: "New lead")\n'
             'then chat.post_message(channel: "#sales", text: "New lead")')
WRONG_API = GOLD.replace("chat.post_message", "slack.post_message")
WRONG_KEY = GOLD.replace("channel:", "room:")
TRUNCATED = GOLD[:60]


def test_identical_programs_score_one_everywhere():
    assert exact_match(GOLD, GOLD + "\n") and string_similarity(GOLD, GOLD) == 1.0
    assert tree_similarity(FLOW, GOLD, GOLD) == 1.0
    h = hallucinations(FLOW, GOLD)
    assert (h.names, h.bad_names, h.keys, h.bad_keys) == (3, 0, 5, 0)


def test_reordered_actions_lose_exact_match_but_keep_most_tree_similarity():
    assert not exact_match(REORDERED, GOLD)
    score = tree_similarity(FLOW, REORDERED, GOLD)
    assert 0.3 < score < 1.0
    one_action_missing = GOLD.rsplit("\n", 1)[0]
    assert tree_similarity(FLOW, one_action_missing, GOLD) > tree_similarity(FLOW, 'when schedule.hourly()\n'
                                                                              'then log.write(message: "x")', GOLD)


def test_wrong_api_name_and_wrong_key_are_hallucinations():
    h = hallucinations(FLOW, WRONG_API)
    assert h.bad_names == 1 and h.bad_keys == 2  # both keys of an unknown operation are unknown too
    h = hallucinations(FLOW, WRONG_KEY)
    assert (h.bad_names, h.bad_keys) == (0, 1)
    assert tree_similarity(FLOW, WRONG_API, GOLD) == 0.0  # does not parse


def test_truncated_output_scores_zero_tree_and_partial_string_similarity():
    assert tree_similarity(FLOW, TRUNCATED, GOLD) == 0.0
    assert 0.2 < string_similarity(TRUNCATED, GOLD) < 0.8


@pytest.mark.parametrize(
    "code, bad_tables, bad_columns",
    [
        ("SELECT name FROM products WHERE price > 10", 0, 0),
        ("SELECT title FROM products", 0, 1),
        ("SELECT name FROM items", 1, 0),
        ("SELECT customers.name, orders.total FROM customers JOIN orders ON customers.id = orders.customer_id", 0, 0),
        ("SELECT customers.total FROM customers", 0, 1),
        ("SELECT category, COUNT(*) AS n FROM products GROUP BY category ORDER BY n DESC", 0, 0),
        ("SELECT name FROM products WHERE category = 'made up words'", 0, 0),
    ],
)
def test_sql_hallucinations_are_read_against_the_schema(code, bad_tables, bad_columns):
    context = "products(id, name, category, price); customers(id, name); orders(id, customer_id, total)"
    h = hallucinations(SQL, code, context=context)
    assert (h.bad_names, h.bad_keys) == (bad_tables, bad_columns)


def test_an_absent_bracket_optional_scores_without_crashing():
    """lark puts None in the tree where ``[...]`` is absent: the tree metric once died on it (issue 28)."""
    from service.grammars import compile_grammar

    shop = compile_grammar("shop", 'start: entry (";" entry)* [";" where]\nentry: /[a-z]+/\nwhere: "at " /[a-z]+/\n',
                           origin="upload")
    assert tree_similarity(shop, "milk;eggs", "milk;eggs") == 1.0
    assert 0.0 < tree_similarity(shop, "milk;eggs", "milk;eggs;at shop") < 1.0
