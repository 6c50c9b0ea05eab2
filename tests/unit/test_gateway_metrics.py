"""The LoRA names vLLM's Prometheus logger writes are the names clients use (service.engine.gateway_metrics)."""

from __future__ import annotations

import dataclasses
import inspect

from hypothesis import given
from hypothesis import strategies as st

from service.engine.gateway_metrics import _by_client_name, client_name, engine_name
from service.names import DSL_NAME_PATTERN, NAME_PATTERN

_NAMES = st.from_regex(NAME_PATTERN, fullmatch=True)


@given(dsl=st.from_regex(DSL_NAME_PATTERN, fullmatch=True), adapter=_NAMES, lora_id=st.integers(1, 2**31 - 1))
def test_the_engine_name_comes_back_as_the_client_name(dsl, adapter, lora_id):
    client = f"{dsl}:{adapter}"
    assert client_name(engine_name(client, lora_id)) == client


def test_two_tenants_adapters_of_one_client_name_are_one_label():
    counts = {engine_name("flow:mine", 3): 1, engine_name("flow:mine", 9): 2, engine_name("sql:x", 4): 1}
    assert _by_client_name(counts) == {"flow:mine": 3, "sql:x": 1}


def test_a_label_lists_a_bounded_number_of_names_the_busiest_first():
    counts = {engine_name(f"flow:a{i}", i): 1 + (i == 40) for i in range(100)}
    names = list(_by_client_name(counts))
    assert len(names) == 16 and names[0] == "flow:a40"


def test_vllm_still_has_the_shape_the_renaming_relies_on():
    """Tied to vLLM 0.32: if this fails, vLLM changed how it records LoRA stats; service.engine.gateway_metrics must
    follow (or the picker's affinity silently sees the engine's names)."""
    from vllm.v1.metrics.loggers import PrometheusStatLogger
    from vllm.v1.metrics.stats import SchedulerStats

    fields = {f.name for f in dataclasses.fields(SchedulerStats)}
    assert {"running_lora_adapters", "waiting_lora_adapters"} <= fields
    assert list(inspect.signature(PrometheusStatLogger.record).parameters)[1:3] == ["scheduler_stats",
                                                                                    "iteration_stats"]
    source = inspect.getsource(PrometheusStatLogger)
    assert "scheduler_stats.running_lora_adapters" in source and "vllm:lora_requests_info" in source
    assert "self.gauge_lora_info.labels(" in source  # the gauge the logger clears before each record
