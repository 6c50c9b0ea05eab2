"""Onboarding: a team's grammar and pairs -> checked dataset -> baseline -> adapter -> gate -> publish -> report.

    dataset.py    pairs checked against the grammar (rejects by line), duplicates out, train / held-out split
    pipeline.py   the stages, through the service's API (``nl2dsl onboard``)
    report.py     ONBOARDING.md / .png / .json
"""

from service.onboarding.dataset import Dataset, Reject, build_dataset, load_pairs
from service.onboarding.pipeline import OnboardConfig, onboard

__all__ = ["Dataset", "OnboardConfig", "Reject", "build_dataset", "load_pairs", "onboard"]
