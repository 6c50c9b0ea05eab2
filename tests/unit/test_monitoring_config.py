"""The Grafana dashboard and the alert rules only use metrics the service defines; the rules' own tests pass."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client import REGISTRY

import service.metrics  # noqa: F401  (registers the nl2dsl_* metrics)
from service.config import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"
_NAME = re.compile(r"\bnl2dsl_[a-z_]+")


_SERIES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def _defined() -> set[str]:
    """Every series name the registry can expose (labelled metrics have no samples until first used)."""
    return {family.name + suffix for family in REGISTRY.collect() for suffix in _SERIES.get(family.type, ("",))}


def _used(text: str) -> set[str]:
    return set(_NAME.findall(text))


def test_dashboard_queries_only_defined_metrics():
    dashboard = json.loads((DEPLOY / "grafana" / "nl2dsl-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = _used("\n".join(exprs))
    assert len(exprs) >= 10 and "nl2dsl_request_duration_seconds_bucket" in used
    assert used <= _defined(), used - _defined()


def test_alert_rules_use_only_defined_metrics():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert _used("\n".join(exprs)) <= _defined()


@pytest.mark.parametrize("args", [["check", "rules", "alerts.yaml"], ["test", "rules", "alerts_test.yaml"]])
def test_promtool_accepts_and_tests_the_alert_rules(args):
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make test` installs Debian's prometheus package (make system-deps)"
    result = subprocess.run([promtool, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
