"""bench/routing.py's simulation keeps its own rules: loads happen where the caches say, routers route as named."""

from __future__ import annotations

from bench.routing import PROFILES, simulate


def test_one_tenant_is_fetched_once_per_replica_and_never_loaded_again():
    profile = PROFILES["cpu"]()
    result = simulate(profile, "round robin", 1, seconds=400, warmup_s=200)
    assert result.requests > 0
    assert result.fetches_s == result.host_loads_s == result.slot_loads_s == 0


def test_hashing_by_adapter_fetches_less_than_spreading_it_at_many_tenants():
    profile = PROFILES["h100"]()
    spread = simulate(profile, "least queue", 1_000, seconds=90, warmup_s=45)
    hashed = simulate(profile, "bounded-load hash", 1_000, seconds=90, warmup_s=45)
    assert hashed.fetches_s < spread.fetches_s / 3 and hashed.host_loads_s < spread.host_loads_s / 3
    assert hashed.throughput > 0.95 * spread.throughput  # the bound keeps the hot adapters' replicas serving


def test_plain_hashing_overloads_the_replica_of_the_busiest_tenant():
    profile = PROFILES["cpu"]()
    hashed = simulate(profile, "consistent hash", 10, seconds=1000, warmup_s=300)
    bounded = simulate(profile, "bounded-load hash", 10, seconds=1000, warmup_s=300)
    assert hashed.p95_s > 5 * bounded.p95_s
