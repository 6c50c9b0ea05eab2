"""The capacity model (bench/capacity.py) behind docs/CAPACITY.md: fitted to its published run, and monotone
where a planner relies on it."""

from __future__ import annotations

import pytest

from bench import capacity
from bench.capacity import GPUS, Workload

WORK = Workload(prompt_tokens=400, output_tokens=50)
COMMON = {"p95_s": 2.0, "efficiency": 0.72, "slowdown": 0.78}


def test_the_fitted_model_reproduces_the_published_sweep_within_a_quarter():
    efficiency, points = capacity.fitted_efficiency()
    assert 0.3 < efficiency <= 1.0
    for _, published, modelled in points:
        assert published == pytest.approx(modelled * efficiency, rel=0.25)


def test_the_mistral_shape_gives_its_known_sizes():
    assert capacity.KV_BYTES_PER_TOKEN == 128 * 1024  # 32 layers x 8 KV heads x 128 x (K, V) x bf16
    assert pytest.approx(84e6, rel=0.01) == capacity.SLOT_BYTES  # rank 16 on q, k, v, o, gate, up, down


def test_adapter_slots_come_out_of_the_kv_cache():
    h100 = GPUS["H100"]
    assert capacity.kv_capacity(h100, WORK, 128) < capacity.kv_capacity(h100, WORK, 8)


def test_more_tenants_or_a_tighter_p95_never_need_fewer_gpus():
    replicas = [capacity.plan(t, 0.02, "A100", WORK, **COMMON).replicas for t in (100, 1_000, 10_000)]
    assert replicas == sorted(replicas) and replicas[-1] > replicas[0]
    loose = capacity.plan(1_000, 0.02, "H100", WORK, **COMMON).replicas
    tight = capacity.plan(1_000, 0.02, "H100", WORK, **{**COMMON, "p95_s": 0.8}).replicas
    assert tight >= loose


def test_with_many_tenants_a_batch_is_capped_by_the_adapter_slots():
    one = capacity.replica(GPUS["H100"], Workload(100, 20), tenants=10_000, max_loras=8, **COMMON)
    assert one.concurrency == 8 and one.limit == "adapter slots"
    shared = capacity.replica(GPUS["H100"], Workload(100, 20), tenants=1, max_loras=8, **COMMON)
    assert shared.concurrency > 8  # one tenant: every request uses the same slot
