"""Bring your own DSL on the real engine: real grammars as written generate code that parses (replicas serving
what either publishes: tests/integration/test_replicas.py)."""

from __future__ import annotations

import importlib.resources
from concurrent.futures import ThreadPoolExecutor

import lark
import pytest

GRAMMARS = {name: (importlib.resources.files("outlines") / "grammars" / f"{name}.lark").read_text()
            for name in ("json", "arithmetic")}
ASKS = {
    "json": ["a cat named Tom, 3 years old", "an empty list", "the numbers one to five", "a user with an email",
             "a shopping cart with two items", "true", "a point with x and y", "a list of three colours",
             "a book with title and author", "null", "a nested object with a list inside", "the weather today",
             "an order with an id and a total", "two people with their ages", "a flag set to false",
             "a product with price 9.99", "a map of countries to capitals", "a matrix of two rows",
             "a settings object with debug on", "a greeting message"],
    "arithmetic": ["one plus two", "three times four", "ten minus seven", "the sum of 1, 2 and 3",
                   "two times open paren three plus four close paren", "minus five", "8 divided by 2",
                   "the product of 6 and 7", "one hundred minus one", "2 plus 2 times 2", "nine", "negative two",
                   "seven plus eight minus nine", "12 divided by 4 times 3", "five squared as a product",
                   "1 plus 2 plus 3 plus 4", "twenty divided by five", "zero times anything, say 5",
                   "three minus minus three", "the average of 4 and 6 as an expression"],
}


@pytest.mark.parametrize("name", sorted(GRAMMARS))
def test_a_real_grammar_as_written_generates_code_lark_parses(server, name):
    grammar = GRAMMARS[name]
    with server.client() as client:
        uploaded = client.post("/dsls", json={"name": f"theirs-{name}", "grammar": grammar})
        assert uploaded.status_code == 201, uploaded.text

        def ask(i: int) -> dict:
            r = client.post("/generate", json={"dsl": f"theirs-{name}", "text": ASKS[name][i], "adapter": "base",
                                               "max_tokens": 96, "temperature": 0.7, "seed": i, "examples": 0})
            assert r.status_code == 200, r.text
            return r.json()

        with ThreadPoolExecutor(10) as pool:  # two batches of ten, not three of up to eight
            results = list(pool.map(ask, range(20)))
    parser = lark.Lark(grammar)  # plain lark, the grammar as its authors wrote it
    finished = [r for r in results if r["finish_reason"] == "stop"]
    for result in finished:
        assert result["valid"] and parser.parse(result["code"]), result["code"]
    assert len(finished) >= 5, [r["finish_reason"] for r in results]
