"""Few-shot examples for a request: BM25 over the DSL's examples, the tenant's own examples first.

Each DSL's index holds its training pairs (``data/<dsl>/train.jsonl``) and the examples named in its yaml;
a tenant with a dataset (``data/<dsl>/tenants/<tenant>/train.jsonl``) gets its own index, searched first.
BM25 (bm25s) indexes 20,000 pairs in about a second and answers in milliseconds on CPU, with no model to
load (docs/EVALUATION.md compares it with MiniLM embeddings). An example whose text is the request itself
is never returned, so evaluating on indexed data cannot leak the answer.

For catalog DSLs (flow) :func:`catalog_hints` also picks the operations a request seems to mention.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

from service.grammars import Catalog, Example, Grammar, GrammarRegistry, Operation, examples_path, load_examples

__all__ = ["ExampleIndex", "Retriever", "catalog_hints"]


class ExampleIndex:
    """A BM25 index over examples' texts."""

    def __init__(self, examples: Sequence[Example]) -> None:
        import bm25s

        # bm25s sets its own logger to DEBUG when imported: a line per index in the service's log, else.
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        self.examples = list(examples)
        self._bm25 = bm25s.BM25()
        if self.examples:
            corpus = bm25s.tokenize([ex.text for ex in self.examples], stopwords="en", show_progress=False)
            self._bm25.index(corpus, show_progress=False)

    def search(self, text: str, *, k: int) -> list[Example]:
        """Up to ``k`` examples, best first; never one whose text is ``text``."""
        if k <= 0 or not self.examples:
            return []
        import bm25s

        query = bm25s.tokenize([text], stopwords="en", show_progress=False)
        n = min(len(self.examples), k + 1)
        docs, scores = self._bm25.retrieve(query, k=n, show_progress=False)
        found = [self.examples[int(d)] for d, s in zip(docs[0], scores[0], strict=True) if s > 0]
        return [ex for ex in found if ex.text.strip() != text.strip()][:k]


class Retriever:
    """One index per shipped DSL and per (tenant, DSL), built at start-up; one per upload version, built when a
    request first asks (the ``max_uploads`` most recently used are kept)."""

    def __init__(self, grammars: GrammarRegistry, data_dir: Path | None, *, max_uploads: int = 256) -> None:
        self._indexes: dict[tuple, ExampleIndex] = {}
        self._uploads: OrderedDict[tuple, ExampleIndex] = OrderedDict()
        self._uploads_lock = threading.Lock()
        self.max_uploads = max_uploads
        for grammar in grammars:
            self._indexes[(None, grammar.name)] = ExampleIndex(
                [*grammar.examples, *_read(data_dir, grammar.name, None)]
            )
            for tenant in grammars.variant_tenants(grammar.name):
                own = list(_read(data_dir, grammar.name, tenant))
                if own:
                    self._indexes[(tenant, grammar.name)] = ExampleIndex(own)

    def _upload_index(self, grammar: Grammar) -> ExampleIndex:
        """The index of an uploaded DSL version's own examples (bounded in number by the upload's limits)."""
        key = (grammar.owner, grammar.name, grammar.version, grammar.examples)
        with self._uploads_lock:
            index = self._uploads.get(key)
            if index is not None:
                self._uploads.move_to_end(key)
                return index
        index = ExampleIndex(grammar.examples)
        with self._uploads_lock:
            self._uploads[key] = index
            while len(self._uploads) > self.max_uploads:
                self._uploads.popitem(last=False)
        return index

    def select(self, grammar: Grammar, text: str, *, k: int, tenant: str | None = None) -> list[Example]:
        """``k`` examples for a request, the tenant's first; the most similar comes last (next to the request).

        An uploaded DSL's examples are its own (those published with it); a shipped DSL's are its training
        pairs, a tenant's own pairs first.
        """
        dsl = grammar.name
        if grammar.origin == "upload":
            indexes = [self._upload_index(grammar)] if grammar.examples else []
        else:
            keys = ((tenant, dsl), (None, dsl)) if tenant else ((None, dsl),)
            indexes = [self._indexes.get(key) for key in keys]
        chosen: list[Example] = []
        for index in indexes:
            if index is not None and len(chosen) < k:
                chosen += [ex for ex in index.search(text, k=k - len(chosen)) if ex not in chosen]
        return chosen[::-1]


_WORD = re.compile(r"[a-z]{3,}")


def catalog_hints(catalog: Catalog, text: str, *, limit: int = 6) -> list[Operation]:
    """Operations whose connector, name or description words appear in ``text`` (API metadata for the prompt)."""
    words = set(_WORD.findall(text.lower()))
    scored = []
    for op in catalog.operations:
        description = catalog.descriptions.get(op.connector, "").lower()
        vocabulary = {op.connector, *op.name.split("_"), *_WORD.findall(description)}
        score = len(words & vocabulary)
        if score:
            scored.append((-score, op.full_name, op))
    return [op for *_, op in sorted(scored)[:limit]]


def _read(data_dir: Path | None, dsl: str, tenant: str | None) -> Iterable[Example]:
    if data_dir is None:
        return []
    path = examples_path(data_dir, dsl, "train", tenant=tenant)
    return load_examples(path) if path.exists() else []
