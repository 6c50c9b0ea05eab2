"""Residency at store size, on this machine: ``python -m bench.residency [--dsls 1000] [--adapters 200]``.

A moto S3 server (in this process) holds ``--dsls`` small DSLs and ``--adapters`` adapters of the shipped size
(copies of adapters/flow-general, rank 16 on seven projections, each with its own manifest), written as replicas
write them: a version, then its journal line with the journal's meta, and a snapshot, as a following replica
leaves every 256 lines. Measured side by side in one run, each written to docs/SCALE.md between its markers:

1. time to ``/readyz``: a replica on an empty bucket, then one on the full bucket (one at a time: two engines
   starting at once on 2 cores would measure each other);
2. on the full-bucket replica, a request on a never-used adapter against the next request on the same adapter,
   taking turns over ``--cold`` adapters: the request's time, and ``timings.fetch`` (download, unpack and check);
3. that replica's disk cache (bounded at ``--cache-mb``) and memory (resident set of its processes) after requests
   on ``--spread`` distinct adapters;
4. a poll with nothing new on a bucket of 1,000 items against one of 10, and the listing every replica made every
   2 s before the journal.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.results import ROOT, progress
from service.adapters.registry import read_adapter
from service.adapters.uploads import pack_adapter
from service.adapters.validation import BaseShapes
from service.config import Settings
from service.journal import Journal
from service.local_server import free_port, local_server
from service.model import base_fingerprint, resolve_model
from service.store import S3Store, Versions

COMMAND = "python -m bench.residency"
DOC = ROOT / "docs" / "SCALE.md"
BEGIN, END = "<!-- bench.residency: begin -->", "<!-- bench.residency: end -->"
BUCKET = "nl2dsl-bench"
KV = 'start: pair ("\\n" pair)*\npair: KEY "=" VALUE\nKEY: /[a-z]+/\nVALUE: /[a-z0-9]+/\n'
ASK = {"dsl": "flow", "text": "when a form is submitted, post the answers to #sales", "max_tokens": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsls", type=int, default=1000)
    parser.add_argument("--adapters", type=int, default=200)
    parser.add_argument("--cold", type=int, default=5, help="never-used adapters asked for, each twice")
    parser.add_argument("--spread", type=int, default=70, help="distinct adapters asked for once each")
    parser.add_argument("--cache-mb", type=int, default=1024, help="the full-bucket replica's disk cache bound")
    args = parser.parse_args()
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    credentials = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    import os

    os.environ.update(credentials)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    work = Path(tempfile.mkdtemp(prefix="nl2dsl-residency-"))
    try:
        rows = _measure(args, endpoint, credentials, work)
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    _write(args, rows)
    progress(f"wrote {DOC.relative_to(ROOT)}")


def _measure(args, endpoint: str, credentials: dict[str, str], work: Path) -> dict:
    rows: dict = {}
    full = S3Store(BUCKET, "full", endpoint_url=endpoint)
    started = time.perf_counter()
    stored_bytes = _fill(full, args.dsls, args.adapters, work)
    progress(f"bucket filled in {time.perf_counter() - started:.0f} s: {args.dsls} DSLs, {args.adapters} adapters, "
             f"{stored_bytes / 1e9:.2f} GB")
    rows["stored"] = stored_bytes
    rows["polls"] = _polls(endpoint, work)

    def replica_env(prefix: str, cache: Path) -> dict[str, str]:
        cache.mkdir(parents=True)
        (cache / "models").symlink_to(Path(Settings().cache_dir) / "models")
        return {**credentials, "NL2DSL_STORE": f"s3://{BUCKET}/{prefix}", "NL2DSL_S3_ENDPOINT_URL": endpoint,
                "NL2DSL_CACHE_DIR": str(cache), "NL2DSL_ADAPTER_CACHE_BYTES": str(args.cache_mb * 2**20),
                "NL2DSL_DTYPE": "float32"}

    ready = {}
    for name, prefix in (("empty bucket", "empty"), ("full bucket", "full")):
        env = replica_env(prefix, work / f"cache-{prefix}")
        spawned = time.perf_counter()
        log = work / f"{prefix}.log"
        with local_server(env=env, log=log, timeout=600) as url:
            ready[name] = time.perf_counter() - spawned
            progress(f"{name}: ready in {ready[name]:.1f} s")
            if prefix == "full":
                rows["cold"] = _cold_and_warm(url, args.cold)
                rows["cold"]["download"] = _median_s(
                    lambda: full.read("adapters/_shared/a0000/00000001.tar.gz"), repeats=5)
                rows["spread"] = _spread(url, args, work / f"cache-{prefix}")
    rows["ready"] = ready
    return rows


def _fill(store: S3Store, dsls: int, adapters: int, work: Path) -> int:
    """Versions and journal lines as replicas write them, and a snapshot as a follower leaves it."""
    versions, journal = Versions(store), Journal(store)
    written, total = [], 0
    for i in range(dsls):
        record = {"name": f"d{i:04d}", "owner": None, "grammar": KV, "start": "start", "description": "kv",
                  "examples": [{"text": "listen on port 80", "code": "port=80", "context": None}], "limits": {}}
        version = versions.publish("dsls", "_shared", f"d{i:04d}", json.dumps(record).encode(), suffix="json")
        journal.record(version)
        written.append(version)
    model = resolve_model(None, Settings().cache_dir)
    fingerprint, base = base_fingerprint(model), BaseShapes.of(model)
    template = ROOT / "adapters" / "flow-general"
    for i in range(adapters):
        folder = work / "adapters" / f"a{i:04d}"
        shutil.copytree(template, folder)
        manifest = folder / "manifest.yaml"
        manifest.write_text(manifest.read_text().replace("name: flow-general", f"name: a{i:04d}"))
        adapter = read_adapter(folder, base_fingerprint=fingerprint, base=base, max_rank=64)
        assert adapter.error is None, adapter.error
        data = pack_adapter(folder)
        shutil.rmtree(folder)
        version = versions.publish("adapters", "_shared", adapter.name, data, suffix="tar.gz", meta=adapter.meta)
        journal.record(version)
        written.append(version)
        total += len(data)
        if i % 50 == 49:
            progress(f"  {i + 1} adapters stored")
    journal.write_snapshot(journal.known, written)
    return total


def _polls(endpoint: str, work: Path) -> dict:
    """A quiet poll (one listing after the last line) and the old full listing, at 10 and 1,000 items."""
    result = {}
    import boto3

    for items in (10, 1000):
        bucket = f"{BUCKET}-poll-{items}"  # a bucket each: moto's listing reads the whole bucket (see below)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        store = S3Store(bucket, "store", endpoint_url=endpoint)
        versions, journal = Versions(store), Journal(store)
        for i in range(items):
            journal.record(versions.publish("dsls", "_shared", f"d{i}", b"{}", suffix="json"))
        last = journal.known
        poll = _median_s(lambda j=journal, n=last: j.read_after(n))
        listing = _median_s(lambda v=versions: (v.scan("dsls"), v.scan("adapters")))
        keys = [len(store.list_after("journal/", f"journal/{last:012d}.json", 1000)),
                len(store.list("dsls/")) + len(store.list("adapters/"))]
        result[items] = (poll, listing, keys)
        progress(f"poll at {items} items: journal {poll * 1000:.1f} ms ({keys[0]} keys listed), full listing "
                 f"{listing * 1000:.1f} ms ({keys[1]} keys)")
    return result


def _median_s(call, repeats: int = 15) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _cold_and_warm(url: str, rounds: int) -> dict:
    cold, warm, fetch = [], [], []
    with httpx.Client(base_url=url, timeout=300) as client:
        client.post("/generate", json={**ASK, "adapter": "flow-general"})  # the engine's first batch paid
        for i in range(rounds):
            name = f"a{i:04d}"
            for times in (cold, warm):
                started = time.perf_counter()
                answer = client.post("/generate", json={**ASK, "adapter": name})
                times.append(time.perf_counter() - started)
                assert answer.status_code == 200, answer.text
                if times is cold:
                    fetch.append(answer.json()["timings"]["fetch"])
            progress(f"  {name}: first request {cold[-1]:.2f} s (fetch {fetch[-1]:.2f} s), next {warm[-1]:.2f} s")
    return {"cold": statistics.median(cold), "warm": statistics.median(warm), "fetch": statistics.median(fetch)}


def _spread(url: str, args, cache: Path) -> dict:
    server = _server_process(url)
    before = _rss(server)
    with httpx.Client(base_url=url, timeout=300) as client:
        for i in range(args.spread):
            answer = client.post("/generate", json={**ASK, "adapter": f"a{(args.cold + i) % args.adapters:04d}"})
            assert answer.status_code == 200, answer.text
    on_disk = sum(p.stat().st_size for p in (cache / "published-adapters").rglob("*") if p.is_file())
    after = _rss(server)
    return {"disk": on_disk, "rss_before": before, "rss_after": after}


def _server_process(url: str):
    import psutil

    port = int(url.rsplit(":", 1)[1])
    for process in psutil.process_iter(["pid"]):
        try:
            if any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in process.net_connections()):
                return process
        except (psutil.Error, OSError):
            continue
    raise RuntimeError("the replica's process was not found")


def _rss(process) -> int:
    """Resident bytes of the replica and its children (engine core, grammar workers)."""
    import psutil

    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def _write(args, rows: dict) -> None:
    ready, cold, spread, polls = rows["ready"], rows["cold"], rows["spread"], rows["polls"]
    lines = [BEGIN, "", f"Produced by `{COMMAND} --dsls {args.dsls} --adapters {args.adapters} --cold {args.cold} "
             f"--spread {args.spread} --cache-mb {args.cache_mb}` on this 2-core CPU; the bucket held "
             f"{args.dsls:,} DSLs and {args.adapters} adapters, {rows['stored'] / 1e9:.1f} GB.", "",
             "| measure | value | baseline | ratio | goal |", "|---|---|---|---|---|",
             f"| time to /readyz: full bucket vs empty bucket | {ready['full bucket']:.1f} s | "
             f"{ready['empty bucket']:.1f} s | {ready['full bucket'] / ready['empty bucket']:.2f} | <= 1.2 |",
             f"| request on a never-used adapter vs the next one on it (1 output token) | {cold['cold']:.2f} s | "
             f"{cold['warm']:.2f} s | {cold['cold'] / cold['warm']:.2f} | reported |",
             f"| of which the fetch (download, unpack, check: `timings.fetch`) | {cold['fetch']:.2f} s | | | |",
             f"| - the download alone (the same archive, read from this process) | {cold['download']:.2f} s | | | |",
             f"| - unpacking and checking it (the fetch less the download) | {cold['fetch'] - cold['download']:.2f} s "
             "| | | |",
             f"| - the engine's load and the rest (first request less the next one, less the fetch) | "
             f"{cold['cold'] - cold['warm'] - cold['fetch']:.2f} s | | | |",
             f"| disk cache after {args.spread + args.cold} distinct adapters vs its bound | "
             f"{spread['disk'] / 2**20:.0f} MiB | {args.cache_mb} MiB | {spread['disk'] / 2**20 / args.cache_mb:.2f} "
             "| <= 1 |",
             f"| replica memory (resident, with its engine) after them vs before | "
             f"{spread['rss_after'] / 2**30:.2f} GiB | {spread['rss_before'] / 2**30:.2f} GiB | "
             f"{spread['rss_after'] / spread['rss_before']:.2f} | bounded by max_cpu_loras (32) |",
             f"| a poll with nothing new: 1,000 items vs 10 (one listing each, {polls[1000][2][0]} and "
             f"{polls[10][2][0]} keys returned) | {polls[1000][0] * 1000:.1f} ms | "
             f"{polls[10][0] * 1000:.1f} ms | {polls[1000][0] / polls[10][0]:.2f} | ~1 |",
             f"| before the journal, the listing every poll made: 1,000 items vs 10 ({polls[1000][2][1]} and "
             f"{polls[10][2][1]} keys returned) | {polls[1000][1] * 1000:.1f} ms | "
             f"{polls[10][1] * 1000:.1f} ms | {polls[1000][1] / polls[10][1]:.2f} | |",
             "", END]
    text = DOC.read_text()
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(head + "\n".join(lines) + tail)


if __name__ == "__main__":
    main()
