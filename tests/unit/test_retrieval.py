"""Retrieval: BM25 over a DSL's examples, tenant examples first, never the request itself; catalog hints."""

from __future__ import annotations

import json
import logging

from service.config import Settings
from service.grammars import Example, GrammarRegistry
from service.retrieval import ExampleIndex, Retriever, catalog_hints

GRAMMARS = GrammarRegistry(Settings().grammars_dir).load()


def test_search_ranks_by_shared_words_and_skips_the_request_itself():
    index = ExampleIndex([
        Example("post the weekly report to #sales", "A"),
        Example("email the finance team every monday", "B"),
        Example("create a ticket when a payment fails", "C"),
    ])
    assert [ex.code for ex in index.search("every monday email finance", k=1)] == ["B"]
    assert "A" not in [ex.code for ex in index.search("post the weekly report to #sales", k=3)]
    assert index.search("zebra quantum", k=3) == []  # nothing in common: no filler examples


def test_tenant_examples_come_first_and_the_best_sits_next_to_the_request(tmp_path):
    flow = tmp_path / "flow"
    (flow / "tenants" / "contoso").mkdir(parents=True)
    rows = [{"text": f"general flow about deals number {i}", "code": f"G{i}"} for i in range(5)]
    (flow / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (flow / "tenants" / "contoso" / "train.jsonl").write_text(json.dumps({"text": "won deals go to #sales",
                                                                        "code": "T"}))
    retriever, flow = Retriever(GRAMMARS, tmp_path), GRAMMARS.get("flow")
    picked = retriever.select(flow, "when deals are won", k=3, tenant="contoso")
    assert len(picked) == 3 and picked[-1].code == "T"
    assert "T" not in [ex.code for ex in retriever.select(flow, "when deals are won", k=3)]
    assert "T" not in [ex.code for ex in retriever.select(flow, "when deals are won", k=3, tenant="fabrikam")]


def test_catalog_hints_pick_the_mentioned_connectors():
    catalog = GRAMMARS.get("flow").catalog
    names = [op.full_name for op in catalog_hints(catalog, "when a ticket is created, send an email to ops")]
    assert "email.send" in names and any(n.startswith("tickets.") for n in names)
    assert catalog_hints(catalog, "zzz qqq") == []


def test_building_an_index_writes_no_debug_lines_into_the_service_log():
    """The service logs at INFO (basicConfig); bm25s sets its own logger to DEBUG and would print every index."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        ExampleIndex([Example(text="when a form is submitted", code="x")])
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert not [r for r in records if r.name.startswith("bm25s")]


def test_an_uploads_examples_are_its_own_versions_and_the_indexes_kept_are_bounded(tmp_path):
    """An upload's examples are indexed when first asked for, per version: a new version's examples replace the
    old ones at once, another owner's upload of the same name never lends its own, and at most ``max_uploads``
    indexes are kept however many uploads are asked for."""
    from dataclasses import replace

    retriever = Retriever(GRAMMARS, tmp_path, max_uploads=2)
    base = replace(GRAMMARS.get("flow"), origin="upload", owner="alpha-corp", version=1,
                   examples=(Example("send the invoice to billing", "OLD"),))
    assert [e.code for e in retriever.select(base, "send invoice", k=2)] == ["OLD"]
    newer = replace(base, version=2, examples=(Example("send the invoice to billing", "NEW"),))
    assert [e.code for e in retriever.select(newer, "send invoice", k=2)] == ["NEW"]
    theirs = replace(base, owner="beta-corp", examples=())
    assert retriever.select(theirs, "send invoice", k=2) == []
    for n in range(3, 10):
        retriever.select(replace(base, version=n), "send invoice", k=1)
    assert len(retriever._uploads) == 2
