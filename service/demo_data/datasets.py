"""Build and read the datasets in ``data/``: ``data/<dsl>/{train,test}.jsonl`` and tenant sets.

    data/flow/train.jsonl, test.jsonl                    general flow (test: held-out trigger/action pairs)
    data/sql/train.jsonl, test.jsonl                     sql over six schemas (test: held-out query shapes)
    data/flow/tenants/<tenant>/train.jsonl, test.jsonl   a tenant's flows, each using its private connector

Everything is deterministic (fixed seeds): ``nl2dsl data`` writes the same files every time.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from service.demo_data.flow import TENANT_ACTIONS, TENANT_TRIGGERS, FlowGenerator, held_out_pairs
from service.demo_data.sql import SqlGenerator
from service.grammars import Example, GrammarRegistry, examples_path, load_examples

__all__ = ["SIZES", "build", "load_split"]

SIZES = {"train": 20_000, "test": 500, "tenant_train": 400, "tenant_test": 100}
_SEEDS = {"flow": 11, "sql": 22, "contoso": 33, "fabrikam": 44}



def load_split(data_dir: Path, dsl: str, split: str, *, tenant: str | None = None,
               limit: int | None = None) -> list[Example]:
    return load_examples(examples_path(data_dir, dsl, split, tenant=tenant))[:limit]


def build(data_dir: Path, grammars: GrammarRegistry, *, sizes: dict[str, int] = SIZES) -> dict[str, int]:
    """Write every dataset; every code string is checked against its grammar. Returns rows per file."""
    counts: dict[str, int] = {}
    flow = FlowGenerator(grammars.get("flow").catalog)
    held_out = held_out_pairs(list(flow.triggers), list(flow.actions), fraction=0.12, seed=_SEEDS["flow"])
    for split in ("train", "test"):
        pairs = flow.generate(n=sizes[split], seed=_SEEDS["flow"] + (split == "test"), held_out=held_out,
                              test=split == "test")
        counts[f"flow/{split}"] = _write(examples_path(data_dir, "flow", split), pairs, grammars, "flow", None)
    sql = SqlGenerator()
    for split in ("train", "test"):
        pairs = sql.generate(n=sizes[split], seed=_SEEDS["sql"] + (split == "test"), test=split == "test")
        counts[f"sql/{split}"] = _write(examples_path(data_dir, "sql", split), pairs, grammars, "sql", None)
    for tenant in sorted(TENANT_TRIGGERS):
        gen = FlowGenerator(grammars.get("flow", tenant=tenant).catalog, tenant=tenant)
        own = set(TENANT_TRIGGERS[tenant]) | set(TENANT_ACTIONS[tenant])
        tenant_held_out = held_out_pairs(list(gen.triggers), list(gen.actions), fraction=0.2, seed=_SEEDS[tenant],
                                         keep=lambda t, a, own=own: t in own or a in own)
        for split in ("train", "test"):
            pairs = gen.generate(n=sizes[f"tenant_{split}"], seed=_SEEDS[tenant] + (split == "test"),
                                 held_out=tenant_held_out, test=split == "test", require_tenant_op=True)
            path = examples_path(data_dir, "flow", split, tenant=tenant)
            counts[f"flow/{tenant}/{split}"] = _write(path, pairs, grammars, "flow", tenant)
    return counts


def _write(path: Path, pairs, grammars: GrammarRegistry, dsl: str, tenant: str | None) -> int:
    grammar = grammars.get(dsl, tenant=tenant)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w") as f:
        for pair in pairs:
            if not grammar.parse(pair.code).valid:
                raise AssertionError(f"generated code does not parse with {dsl}: {pair.code!r}")
            row = {k: v for k, v in asdict(pair).items() if v is not None}
            for key in ("ops", "shape"):
                if key in row:
                    row[key] = list(row[key])
            f.write(json.dumps(row) + "\n")
            n += 1
    return n
