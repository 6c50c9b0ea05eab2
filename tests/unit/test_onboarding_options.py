"""An onboarding run's options are defined once (service/onboarding/options.py): the CLI's flags are made from
them, and the API's schema, the pipeline, the chart's values and the playground's form carry the same defaults."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from service.cli import _option_flags
from service.config import PROJECT_ROOT
from service.onboarding.options import OnboardOptions, budget_seconds
from service.onboarding.pipeline import OnboardConfig

DEFAULTS = OnboardOptions()
CHART = PROJECT_ROOT / "deploy" / "helm" / "nl2dsl"
PLAYGROUND = PROJECT_ROOT / "service" / "playground" / "index.html"


def _flags(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    _option_flags(parser)
    return parser.parse_args(argv)


def test_the_cli_flags_default_to_the_options_and_parse_into_them():
    assert OnboardOptions(**vars(_flags([]))) == DEFAULTS
    given_flags = _flags(["--budget", "5m", "--heldout", "30", "--max-tokens", "96", "--tenant", "acme"])
    assert OnboardOptions(**vars(given_flags)) == DEFAULTS.model_copy(
        update={"budget_s": 300.0, "heldout": 30, "max_tokens": 96, "tenant": "acme"})


def test_the_pipeline_defaults_are_the_options():
    config = OnboardConfig(grammar=PROJECT_ROOT, pairs=PROJECT_ROOT, name="x", work_dir=PROJECT_ROOT)
    for name, value in DEFAULTS.model_dump().items():
        assert getattr(config, name) == value, name


def test_the_apis_schema_has_the_options_defaults():
    from service.app import create_app

    schema = create_app().openapi()["components"]["schemas"]["OnboardingStart"]["properties"]
    for name, value in DEFAULTS.model_dump().items():
        assert schema[name].get("default") == value, name


def test_the_charts_job_defaults_are_the_options():
    values = yaml.safe_load((CHART / "values.yaml").read_text())["onboarding"]
    assert values["budgetSeconds"] == DEFAULTS.budget_s and values["margin"] == DEFAULTS.margin
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["onboarding"]["properties"]
    bounds = OnboardOptions.model_json_schema()["properties"]
    assert schema["budgetSeconds"]["minimum"] == bounds["budget_s"]["minimum"]
    assert (schema["margin"]["minimum"], schema["margin"]["maximum"]) == (bounds["margin"]["minimum"],
                                                                          bounds["margin"]["maximum"])


def test_the_playgrounds_form_starts_at_the_options_defaults():
    page = PLAYGROUND.read_text()

    def value(element: str) -> float:
        return float(re.search(rf'id="{element}"[^>]*\bvalue="([^"]*)"', page).group(1))

    assert value("o-budget") * 60 == DEFAULTS.budget_s
    assert value("o-heldout") == DEFAULTS.heldout
    assert value("o-margin") == DEFAULTS.margin
    assert value("o-alpha") == DEFAULTS.alpha
    assert value("o-max-tokens") == DEFAULTS.max_tokens


@given(st.text(max_size=40))
def test_a_budget_a_person_writes_is_seconds_or_refused(text):
    """Property: any text is either a number with an optional s/m/h unit, in seconds, or a ValueError."""
    try:
        seconds = budget_seconds(text)
    except ValueError:
        assert not re.fullmatch(r"\s*\d+(\.\d+)?\s*[smh]?\s*", text, flags=re.ASCII)
        return
    assert seconds >= 0


@pytest.mark.parametrize(("text", "seconds"), [("900", 900), ("900s", 900), ("30m", 1800), ("1.5h", 5400)])
def test_budgets_as_people_write_them(text, seconds):
    assert budget_seconds(text) == seconds


def test_the_compare_declaration_comes_from_the_yaml_beside_the_grammar_or_the_apis_body(tmp_path):
    from service.cli import _comparison_beside

    grammar = tmp_path / "cron.lark"
    grammar.write_text('start: "x"\n')
    assert _comparison_beside(grammar) is None  # none declared: canonical match on the plain tree
    (tmp_path / "cron.yaml").write_text("compare:\n  unordered: [field]\n  semantic: cron\n")
    declared = _comparison_beside(grammar)
    assert declared.unordered == ("field",) and declared.semantic == "cron"
    options = OnboardOptions(compare=declared)
    assert OnboardOptions.model_validate_json(options.model_dump_json()) == options  # as options.json carries it
    (tmp_path / "cron.yaml").write_text("compare:\n  semantic: python\n")
    with pytest.raises(ValueError):
        _comparison_beside(grammar)
