"""Datasets: deterministic, every code string parses, the test split holds out combinations unseen in train."""

from __future__ import annotations

import json

import pytest

from service.config import Settings
from service.demo_data.datasets import SIZES, build
from service.demo_data.flow import FlowGenerator
from service.demo_data.sql import HELD_OUT_SHAPES, SqlGenerator
from service.grammars import GrammarRegistry, examples_path

SETTINGS = Settings()
GRAMMARS = GrammarRegistry(SETTINGS.grammars_dir).load()
SMALL = {"train": 300, "test": 60, "tenant_train": 40, "tenant_test": 20}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    build(out, GRAMMARS, sizes=SMALL)
    return out


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generation_is_deterministic(small, tmp_path):
    build(tmp_path, GRAMMARS, sizes=SMALL)
    for path in small.rglob("*.jsonl"):
        assert (tmp_path / path.relative_to(small)).read_bytes() == path.read_bytes(), path


@pytest.mark.parametrize("dsl, tenant", [("flow", None), ("sql", None), ("flow", "contoso"), ("flow", "fabrikam")])
def test_every_generated_string_parses_and_no_test_pair_is_in_train(small, dsl, tenant):
    grammar = GRAMMARS.get(dsl, tenant=tenant)
    train, test = (_rows(examples_path(small, dsl, s, tenant=tenant)) for s in ("train", "test"))
    for row in train + test:
        assert grammar.parse(row["code"]).valid, row
    assert not {r["text"] for r in test} & {r["text"] for r in train}
    assert not {(r["text"], r["code"]) for r in test} & {(r["text"], r["code"]) for r in train}


def test_flow_test_split_holds_out_trigger_action_pairs(small):
    train, test = (_rows(examples_path(small, "flow", s)) for s in ("train", "test"))

    def pairs(row):
        return {(row["ops"][0], a) for a in row["ops"][1:]}

    seen = set().union(*(pairs(r) for r in train))
    assert all(pairs(r) - seen for r in test), "every test flow has a trigger/action pair no train flow has"


def test_sql_test_split_holds_out_query_shapes(small):
    train, test = (_rows(examples_path(small, "sql", s)) for s in ("train", "test"))
    assert all(tuple(r["shape"]) not in HELD_OUT_SHAPES for r in train)
    assert all(tuple(r["shape"]) in HELD_OUT_SHAPES for r in test)
    assert len({r["context"] for r in train}) >= 5, "pairs carry several schemas"


def test_tenant_rows_use_the_tenant_connector(small):
    for tenant, prefix in (("contoso", "crm."), ("fabrikam", "erp.")):
        for row in _rows(examples_path(small, "flow", "train", tenant=tenant)):
            assert prefix in row["code"], row


def test_phrasing_varies(small):
    texts = [r["text"] for r in _rows(examples_path(small, "flow", "train"))]
    assert len(set(texts)) == len(texts)
    assert sum(t[0].isupper() for t in texts) not in (0, len(texts))
    assert any(t.lower().startswith(("please", "could you", "can you", "i want", "i'd like")) for t in texts)
    assert any(r["code"].count("\nthen ") == 3 for r in _rows(examples_path(small, "flow", "train")))  # 4 actions


def test_shipped_data_files_have_the_issue_sizes():
    assert SIZES["train"] >= 20_000
    for dsl in ("flow", "sql"):
        with examples_path(SETTINGS.data_dir, dsl, "train").open() as f:
            assert sum(1 for _ in f) == SIZES["train"]


def test_a_tenant_grammar_rejects_another_tenants_connector():
    crm = 'when crm.deal_won(pipeline: "EMEA")\nthen chat.post_message(channel: "#sales", text: "Won")'
    erp = 'when erp.stock_low(item: "pallets")\nthen chat.post_message(channel: "#ops", text: "Low")'
    assert GRAMMARS.get("flow", tenant="contoso").parse(crm).valid
    assert not GRAMMARS.get("flow", tenant="contoso").parse(erp).valid
    assert GRAMMARS.get("flow", tenant="fabrikam").parse(erp).valid
    assert not GRAMMARS.get("flow", tenant="fabrikam").parse(crm).valid
    assert not GRAMMARS.get("flow").parse(crm).valid and not GRAMMARS.get("flow", tenant="nobody").parse(erp).valid


def test_generators_only_phrase_catalog_operations():
    with pytest.raises(ValueError):
        FlowGenerator(GRAMMARS.get("flow").catalog, tenant="contoso")  # contoso phrasing, shared catalog
    assert SqlGenerator().generate(n=5, seed=0, test=False)
