"""NL -> DSL example pairs and where they live on disk.

    data/<dsl>/train.jsonl, test.jsonl                    a DSL's pairs
    data/<dsl>/tenants/<tenant>/train.jsonl, test.jsonl   a tenant's own pairs

Retrieval reads them for few-shot prompts, training and evaluation for datasets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Example", "examples_path", "load_examples"]


@dataclass(frozen=True)
class Example:
    """One NL -> DSL pair (``context`` is e.g. the table schema for sql)."""

    text: str
    code: str
    context: str | None = None


def examples_path(data_dir: Path, dsl: str, split: str, *, tenant: str | None = None) -> Path:
    """``data/<dsl>/<split>.jsonl``, or the tenant's own file under ``tenants/<tenant>/``."""
    base = Path(data_dir) / dsl
    return (base / "tenants" / tenant if tenant else base) / f"{split}.jsonl"


def load_examples(path: Path) -> list[Example]:
    """Read a JSONL file of ``{"text", "code", "context"?}`` rows."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [Example(text=r["text"], code=r["code"], context=r.get("context")) for r in rows]
