"""Routing many tenants' adapters over replicas: a discrete-event simulation of what one machine cannot hold.

``python -m bench.routing`` writes docs/SCALE.md's simulation section (between its markers) and docs/SCALE.png.

N replicas, each with ``lanes`` requests running at once, ``max_loras`` adapters a batch may hold (vLLM's
scheduler skips a waiting request whose adapter would be one too many), a host cache (``max_cpu_loras``) and a
disk cache, all least-recently-used. Tenants send Zipf-distributed traffic (exponent 1), one adapter each, at
70% of the replicas' capacity, so every case has the same load and only the spread of adapters changes.

A request's way through a replica: fetch the adapter's files from the store if the disk cache lacks them
(concurrent requests share one fetch), wait for a lane and a batch slot, read the adapter into host memory if
that cache lacks it, copy it into a batch slot if the batch slots lack it, then run; a load's time is added to
the request that needed it (in vLLM it also holds up the engine step it happens in: not modelled, so loads cost
the others a little more than shown). Two profiles:

- ``h100``: a replica's concurrency and round from bench/capacity.py (Mistral-7B, bf16, 391 prompt and 50 output
  tokens, rank 16: 84 MB an adapter); the round grows with the distinct adapters in the batch as that model's
  step reads each slot. Load and fetch times are bandwidth assumptions (stated in ``PROFILES``).
- ``cpu``: this 2-core CPU as measured (docs/bench/results/): a request's time at concurrency 1, 8 and 32, the
  mixed-adapter ratios, the cold-adapter cost; an adapter of the shipped size (19 MB).

Five routers: round robin; least queue (fewest requests waiting, fetching or running); consistent hashing of the
adapter onto a ring (100 points a replica); the same ring with bounded loads (a replica past 1.25 x the mean load
passes the request along the ring: Mirrokni, Thorup and Zadimoghaddam's consistent hashing with bounded loads);
and the Gateway API Inference Extension picker's LoRA affinity (its scorer:
1 for a replica running the adapter, 0.8 for one with a free batch slot, 0.6 for one queueing it, else 0; added
to its queue scorer, the highest total wins, ties at random). The picker's view is the replicas' state at the
moment of the request (its real metrics are scraped every ~50 ms: a little staler).
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import heapq
import itertools
import json
import math
import random
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.capacity import GPUS, SLOT_BYTES, Workload, fitted_efficiency, replica, round_seconds
from bench.results import RESULTS_DIR, ROOT, progress

COMMAND = "python -m bench.routing"
DOC = ROOT / "docs" / "SCALE.md"
PLOT = ROOT / "docs" / "SCALE.png"
BEGIN, END = "<!-- bench.routing: begin -->", "<!-- bench.routing: end -->"

TENANTS = (10, 100, 1_000, 10_000)
ROUTERS = ("round robin", "least queue", "consistent hash", "bounded-load hash", "LoRA affinity (picker)")
#: Bounded-load consistent hashing: a replica takes a request only while it holds under this many times the mean.
BOUND = 1.25
LOAD = 0.7
ZIPF_S = 1.0
#: The latency a request must meet to count in the goodput.
SLO_S = {"h100": 2.0, "cpu": 15.0}
WORK = Workload(391, 50)  # docs/CAPACITY.md: flow and sql with 3 retrieved examples
SLOWDOWN = 0.79  # docs/CAPACITY.md: adapter 0.81 x grammar 0.98 of the base model's throughput


@dataclass(frozen=True)
class Profile:
    name: str
    replicas: int
    lanes: int
    max_loras: int
    host_slots: int
    disk_slots: int
    #: Seconds one request runs, given the requests and the distinct adapters running beside it.
    service_s: Callable[[int, int], float]
    slot_load_s: float  # host memory -> a batch slot
    host_load_s: float  # the disk cache -> host memory
    fetch_s: float  # the store -> the disk cache (download, unpack, check)
    adapter_mb: float
    notes: tuple[str, ...] = ()


def _h100() -> Profile:
    efficiency, _ = fitted_efficiency()
    gpu, max_loras = GPUS["H100"], 128
    plan = replica(gpu, WORK, p95_s=2.0, efficiency=efficiency, slowdown=SLOWDOWN, tenants=10_000,
                   max_loras=max_loras)
    mb = SLOT_BYTES / 1e6
    return Profile(
        "h100", replicas=8, lanes=plan.concurrency, max_loras=max_loras, host_slots=256, disk_slots=1_000,
        service_s=lambda running, adapters: round_seconds(gpu, WORK, max(1, running), efficiency=efficiency,
                                                          adapters=max(1, adapters)) / SLOWDOWN,
        slot_load_s=mb / 25_000 + 0.002, host_load_s=mb / 2_000 + 0.02, fetch_s=0.05 + mb / 250 + mb / 500,
        adapter_mb=mb, notes=(
            f"lanes {plan.concurrency} and the round from bench/capacity.py at p95 2 s ({plan.latency_s:.2f} s "
            "with every slot in use)",
            "slot load: PCIe at 25 GB/s + 2 ms; host load: NVMe at 2 GB/s + 20 ms; fetch: 50 ms to first byte, "
            "250 MB/s from the store, unpack and check at 500 MB/s (assumptions)",
            "host cache 256 adapters (21 GB of RAM), disk cache 1,000 adapters (84 GB)"))


def _cpu() -> Profile:
    # This machine as bench.service and bench.engine measured it (docs/bench/results/): POST /generate's requests/s
    # at concurrency 1, 8 and 32 (one adapter), and what 8 and 64 distinct adapters in one batch keep of one's
    # tokens/s (every adapter in a slot: max_loras 64).
    service, engine = _results("service"), _results("engine")
    measured = [(n, n / next(c["value"] for c in service if c["name"].startswith(f"concurrency {n} ")))
                for n in (1, 8, 32)]
    mixed = [(1, 1.0), *((k, 1 / next(c["ratio"] for c in engine
                                      if c["name"] == f"{k} distinct adapters in 64 requests, max_loras 64"))
                         for k in (8, 64))]
    return Profile(
        "cpu", replicas=8, lanes=8, max_loras=16, host_slots=32, disk_slots=50,
        service_s=lambda running, adapters: _interpolate(measured, running) * _interpolate(mixed, adapters),
        slot_load_s=0.0, host_load_s=0.026, fetch_s=0.05 + 19 / 250 + 19 / 500, adapter_mb=19, notes=(
            "a request's time at concurrency 1, 8 and 32 and the mixed-adapter ratios as measured here "
            "(docs/bench/results/service.json, engine.json)",
            "host load: a never-seen adapter's first token, 0.026 s later than a loaded one's (measured); on the "
            "CPU the batch slots are host memory, so a slot load costs nothing more",
            "fetch of 19 MB: as the h100 profile's assumptions; the engine's defaults max_loras 16, "
            "max_cpu_loras 32; disk cache 50 adapters (1 GB)"))


def _results(bench: str) -> list[dict]:
    """The comparisons of bench.<bench>'s latest run (docs/bench/results/<bench>.json)."""
    path = RESULTS_DIR / f"{bench}.json"
    if not path.exists():
        raise SystemExit(f"no {path}: run `python -m bench.{bench}` first (make bench)")
    return json.loads(path.read_text())["comparisons"]


def _interpolate(points: list[tuple[int, float]], x: int) -> float:
    x = max(points[0][0], x)
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    (x0, y0), (x1, y1) = points[-2:]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


PROFILES: dict[str, Callable[[], Profile]] = {"h100": _h100, "cpu": _cpu}


class _LRU:
    def __init__(self, capacity: int) -> None:
        self.capacity, self.items = capacity, OrderedDict()

    def hit(self, key: int, *, keep: dict | None = None) -> bool:
        """Whether ``key`` was held; it is held and most recent afterwards, evicting the least recent one not in
        ``keep`` (an adapter a running request uses stays)."""
        held = key in self.items
        self.items[key] = None
        self.items.move_to_end(key)
        if len(self.items) > self.capacity:
            victim = next((k for k in self.items if not keep or k not in keep), None)
            if victim is not None:
                del self.items[victim]
        return held


@dataclass
class _Replica:
    profile: Profile
    index: int
    slots: _LRU = field(init=False)
    host: _LRU = field(init=False)
    disk: _LRU = field(init=False)
    queue: deque = field(default_factory=deque)
    running: dict[int, int] = field(default_factory=dict)  # adapter -> its requests running
    fetching: dict[int, list] = field(default_factory=dict)  # adapter -> requests waiting for its files
    busy: int = 0

    def __post_init__(self) -> None:
        self.slots, self.host = _LRU(self.profile.max_loras), _LRU(self.profile.host_slots)
        self.disk = _LRU(self.profile.disk_slots)

    @property
    def load(self) -> int:
        return self.busy + len(self.queue) + sum(len(w) for w in self.fetching.values())


@dataclass
class Result:
    router: str
    tenants: int
    requests: int
    p50_s: float
    p95_s: float
    goodput: float  # requests/s within the SLO
    throughput: float
    slot_loads_s: float
    host_loads_s: float
    fetches_s: float


def simulate(profile: Profile, router: str, tenants: int, *, seconds: float, warmup_s: float,
             seed: int = 0) -> Result:
    """One run: Poisson arrivals for ``seconds``; requests that arrive in the first ``warmup_s`` are not counted
    (the caches start empty)."""
    rng = random.Random(seed)
    replicas = [_Replica(profile, i) for i in range(profile.replicas)]
    capacity = profile.replicas * profile.lanes / profile.service_s(profile.lanes, min(profile.max_loras, tenants))
    rate = LOAD * capacity
    weights = [1 / (k + 1) ** ZIPF_S for k in range(tenants)]
    cumulative = list(itertools.accumulate(weights))
    route = _router(router, replicas, rng)
    events: list = []
    ticket = itertools.count()
    latencies: list[float] = []
    counts = {"slot": 0, "host": 0, "fetch": 0}

    def push(time: float, kind: str, *data) -> None:
        heapq.heappush(events, (time, next(ticket), kind, data))

    def schedule(now: float, rep: _Replica) -> None:
        """Start what the lanes and batch slots allow, first come first served, skipping a request whose
        adapter would exceed max_loras (as vLLM's scheduler does)."""
        skipped = deque()
        while rep.queue and rep.busy < profile.lanes:
            arrived, adapter = rep.queue.popleft()
            if adapter not in rep.running and len(rep.running) >= profile.max_loras:
                skipped.append((arrived, adapter))
                continue
            stall = 0.0
            if not rep.host.hit(adapter, keep=rep.running):
                stall += profile.host_load_s
                counts["host"] += arrived >= warmup_s
            if not rep.slots.hit(adapter, keep=rep.running):
                stall += profile.slot_load_s
                counts["slot"] += arrived >= warmup_s
            rep.busy += 1
            rep.running[adapter] = rep.running.get(adapter, 0) + 1
            took = stall + profile.service_s(rep.busy, len(rep.running))
            push(now + took, "done", rep.index, arrived, adapter)
        rep.queue.extendleft(reversed(skipped))

    def arrive(now: float) -> None:
        adapter = bisect.bisect(cumulative, rng.random() * cumulative[-1])
        rep = route(adapter)
        if adapter in rep.fetching:
            rep.fetching[adapter].append(now)
        elif rep.disk.hit(adapter):
            rep.queue.append((now, adapter))
            schedule(now, rep)
        else:
            rep.fetching[adapter] = [now]
            counts["fetch"] += now >= warmup_s
            push(now + profile.fetch_s, "fetched", rep.index, adapter)

    push(rng.expovariate(rate), "arrive")
    while events:
        now, _, kind, data = heapq.heappop(events)
        if kind == "arrive":
            arrive(now)
            if now < seconds:
                push(now + rng.expovariate(rate), "arrive")
        elif kind == "fetched":
            rep, adapter = replicas[data[0]], data[1]
            rep.queue.extend((arrived, adapter) for arrived in rep.fetching.pop(adapter))
            schedule(now, rep)
        else:
            rep, arrived, adapter = replicas[data[0]], data[1], data[2]
            rep.busy -= 1
            rep.running[adapter] -= 1
            if not rep.running[adapter]:
                del rep.running[adapter]
            if arrived >= warmup_s:
                latencies.append(now - arrived)
            schedule(now, rep)
    span = seconds - warmup_s
    latencies.sort()
    slo = SLO_S[profile.name]
    return Result(router, tenants, len(latencies), _quantile(latencies, 0.5), _quantile(latencies, 0.95),
                  sum(t <= slo for t in latencies) / span, len(latencies) / span,
                  counts["slot"] / span, counts["host"] / span, counts["fetch"] / span)


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else math.nan


def _router(name: str, replicas: list[_Replica], rng: random.Random) -> Callable[[int], _Replica]:
    if name == "round robin":
        turn = itertools.cycle(replicas)
        return lambda adapter: next(turn)
    if name == "least queue":
        return lambda adapter: min(replicas, key=lambda r: (r.load, rng.random()))
    ring = sorted((_hash(f"{r.index}:{point}"), r.index) for r in replicas for point in range(100))
    keys = [k for k, _ in ring]
    if name == "consistent hash":
        return lambda adapter: replicas[ring[bisect.bisect(keys, _hash(str(adapter))) % len(ring)][1]]
    if name == "bounded-load hash":
        def bounded(adapter: int) -> _Replica:
            limit = BOUND * (sum(r.load for r in replicas) + 1) / len(replicas)
            start = bisect.bisect(keys, _hash(str(adapter)))
            for step in range(len(ring)):
                rep = replicas[ring[(start + step) % len(ring)][1]]
                if rep.load < limit:
                    return rep
            return replicas[ring[start % len(ring)][1]]
        return bounded
    if name == "LoRA affinity (picker)":
        return lambda adapter: _picker(replicas, adapter, rng)
    raise ValueError(name)


def _picker(replicas: list[_Replica], adapter: int, rng: random.Random) -> _Replica:
    loads = [r.load for r in replicas]
    low, high = min(loads), max(loads)
    best, best_score = replicas[0], -1.0
    for rep, load in zip(replicas, loads, strict=True):
        queued = {a for _, a in rep.queue} | set(rep.fetching)
        if adapter in rep.running:
            affinity = 1.0
        elif len(rep.running) + len(queued - set(rep.running)) < rep.profile.max_loras:
            affinity = 0.8
        elif adapter in queued:
            affinity = 0.6
        else:
            affinity = 0.0
        score = affinity + ((high - load) / (high - low) if high > low else 1.0) + rng.random() * 1e-6
        if score > best_score:
            best, best_score = rep, score
    return best


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="simulated seconds of traffic per case")
    parser.add_argument("--warmup", type=float, default=120.0, help="simulated seconds not counted")
    args = parser.parse_args()
    tables = {}
    for name, make in PROFILES.items():
        profile = make()
        seconds, warmup = (args.seconds, args.warmup) if name == "h100" else (args.seconds * 10, args.warmup * 10)
        rows = []
        for tenants in TENANTS:
            for router in ROUTERS:
                rows.append(simulate(profile, router, tenants, seconds=seconds, warmup_s=warmup))
                r = rows[-1]
                progress(f"{name}: {tenants} tenants, {router}: p95 {r.p95_s:.2f} s, "
                         f"{r.slot_loads_s:.1f} slot loads/s, {r.fetches_s:.2f} fetches/s")
        tables[name] = (profile, rows, seconds, warmup)
    _write(tables)
    _plot(tables)
    progress(f"wrote {DOC.relative_to(ROOT)} and {PLOT.relative_to(ROOT)}")


def _write(tables: dict) -> None:
    lines = [BEGIN, "", f"Produced by `{COMMAND}` (seed 0; a run takes a few minutes).", ""]
    for name, (profile, rows, seconds, warmup) in tables.items():
        lines += [f"### Profile `{name}`: {profile.replicas} replicas, {profile.lanes} lanes each, max_loras "
                  f"{profile.max_loras}, {profile.adapter_mb:.0f} MB an adapter", ""]
        lines += [f"- {note}" for note in profile.notes]
        lines += [f"- {seconds:.0f} simulated seconds a case, the first {warmup:.0f} not counted; load "
                  f"{LOAD:.0%} of capacity; goodput counts requests within {SLO_S[name]:.0f} s", ""]
        lines += ["| tenants | router | p50 (s) | p95 (s) | goodput (req/s) | batch-slot loads/s | host loads/s "
                  "| fetches/s |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r.tenants:,} | {r.router} | {r.p50_s:.2f} | {r.p95_s:.2f} | {r.goodput:.1f} | "
                         f"{r.slot_loads_s:.1f} | {r.host_loads_s:.1f} | {r.fetches_s:.2f} |")
        lines.append("")
    lines += ["![routing simulation](SCALE.png)", "", END]
    text = DOC.read_text() if DOC.exists() else f"# Scale\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(head + "\n".join(lines) + tail)


def _plot(tables: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(tables), 2, figsize=(11, 4 * len(tables)), squeeze=False)
    for row, (name, (_, rows, _, _)) in enumerate(tables.items()):
        for router in ROUTERS:
            mine = [r for r in rows if r.router == router]
            axes[row][0].plot([r.tenants for r in mine], [r.p95_s for r in mine], marker="o", label=router)
            axes[row][1].plot([r.tenants for r in mine], [r.fetches_s + r.host_loads_s for r in mine], marker="o",
                              label=router)
        axes[row][0].set(xscale="log", yscale="log", xlabel="tenants", ylabel="p95 latency (s)",
                         title=f"{name}: p95 latency")
        axes[row][1].set(xscale="log", xlabel="tenants", ylabel="adapter reads + fetches per second",
                         title=f"{name}: adapter traffic")
        axes[row][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(PLOT, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
