"""A run's progress as one JSON file, replaced whole at every change: what an onboarding job's status reads.

    {"state": "running", "stage": "train", "progress": {"step": 12, "total": 40, "score": 0.31},
     "report": {...ONBOARDING.json so far...}, "error": null}

``state`` is "running", then "published" / "not published" when the run ends, or "failed" with ``error``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from service.onboarding.report import Report, report_json

__all__ = ["Status"]


class Status:
    """``path`` None keeps nothing (the command line without ``--status``)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, Any] = {"state": "running", "stage": None, "progress": None, "report": None,
                                     "error": None}

    def update(self, *, report: Report | None = None, **fields: Any) -> None:
        if report is not None:
            fields["report"] = report_json(report)
        self.data.update(fields)
        if self.path is not None:
            partial = self.path.with_suffix(".tmp")
            partial.write_text(json.dumps(self.data))
            os.replace(partial, self.path)  # a reader never sees half a file
