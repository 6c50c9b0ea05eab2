"""What tenants sharing one replica can do to each other: ``python -m bench.isolation`` (issue 42).

Starts ``nl2dsl serve`` on the embedded model (development mode: the body's ``tenant`` names the tenant) and
measures, in one run:

- the prefix cache's timing oracle: a tenant sends a private context; another replays a right and a wrong guess,
  each new to it (time to first token and prompt tokens served from the cache, per round);
- what a cache of one's own costs within a tenant: a tenant's first request against its repeat;
- fair share: another tenant's ``/generate`` alone, and while one tenant holds 16 long generations, with the
  share on (``NL2DSL_ENGINE_SLOTS`` at its default) and off (0, a second server);
- an onboarding run whose dataset check meets an ambiguous grammar: another tenant's ``/generate`` during it;
- 24 upload bodies that stop sending: the server's resident memory, and how many were received.

Writes docs/bench/isolation.json (the data) and docs/ISOLATION.md (tables made from it, with the command).
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from bench.results import ROOT, progress
from service.local_server import local_server

COMMAND = "python -m bench.isolation"
DATA = ROOT / "docs" / "bench" / "isolation.json"
DOC = ROOT / "docs" / "ISOLATION.md"
ASK = {"dsl": "flow", "text": "post form answers to #sales", "examples": 0, "constrained": False}
PROBE = {**ASK, "tenant": "probe", "max_tokens": 32, "constrained": True}
#: The hog's generations: long, unconstrained, greedy.
HOG = {**ASK, "tenant": "hog", "adapter": "base", "text": "describe every connector you know", "max_tokens": 200}
ROUNDS = 4
PROBES = 6
AMBIGUOUS = 'start: e\ne: "a" | e e\n'


def _secret(round_: int) -> str:
    """About 1.3 kB of a tenant's private schema, new each round."""
    return "; ".join(f"table acct{round_}_{i}(id int, owner text, balance numeric, iban text)" for i in range(22))


def _send(client: httpx.Client, body: dict) -> dict:
    response = client.post("/generate", json=body)
    response.raise_for_status()
    return response.json()


def _oracle(client: httpx.Client) -> dict:
    right, wrong = [], []
    for round_ in range(ROUNDS):
        secret = _secret(round_)
        _send(client, {**ASK, "tenant": "victim", "context": secret, "max_tokens": 1})
        for guesses, context in ((wrong, "Z" + secret[1:]), (right, secret)):
            answer = _send(client, {**ASK, "tenant": "attacker", "context": context, "max_tokens": 1})
            guesses.append({"ttft_s": answer["timings"]["ttft"], "cached_tokens": answer["usage"]["cached_tokens"],
                            "prompt_tokens": answer["usage"]["prompt_tokens"]})
        progress(f"  oracle round {round_ + 1}: right {right[-1]}, wrong {wrong[-1]}")
    return {"right": right, "wrong": wrong}


def _own_cache(client: httpx.Client) -> dict:
    first, again = [], []
    for round_ in range(ROUNDS):
        body = {**ASK, "tenant": f"own{round_}", "context": _secret(100 + round_), "max_tokens": 1}
        for samples in (first, again):
            answer = _send(client, body)
            samples.append({"ttft_s": answer["timings"]["ttft"], "cached_tokens": answer["usage"]["cached_tokens"],
                            "prompt_tokens": answer["usage"]["prompt_tokens"]})
    return {"first": first, "again": again}


def _probe_seconds(client: httpx.Client, n: int = PROBES) -> list[float]:
    seconds = []
    for _ in range(n):
        started = time.perf_counter()
        _send(client, PROBE)
        seconds.append(time.perf_counter() - started)
    return seconds


def _fair_share(url: str, client: httpx.Client) -> dict:
    """The probe alone; then, while the hog keeps 16 generations going (each sent again as it ends), the probe's
    first request (the hog's 16 already running: no generation is preempted) and, the hog's share in force,
    its next ones."""
    _probe_seconds(client, 2)  # warm
    alone = _probe_seconds(client)
    stop = threading.Event()

    def hog() -> None:
        with httpx.Client(base_url=url, timeout=600) as own:
            while not stop.is_set():
                own.post("/generate", json=HOG)

    with ThreadPoolExecutor(16) as pool:
        for _ in range(16):
            pool.submit(hog)
        time.sleep(10)  # all 16 under way
        first = _probe_seconds(client, 1)
        time.sleep(20)  # the hog's generations that were running end; its next ones keep to its share
        steady = _probe_seconds(client)
        stop.set()
    progress(f"  probe alone {statistics.median(alone):.2f} s, its first request beside the hog "
             f"{first[0]:.2f} s, its next ones {statistics.median(steady):.2f} s")
    return {"alone_s": alone, "first_beside_hog_s": first, "beside_hog_s": steady}


def _onboarding(client: httpx.Client) -> dict:
    alone = _probe_seconds(client)
    pairs = "\n".join(json.dumps({"text": f"{n} times a", "code": "a" * n}) for n in range(300, 340))
    run = client.post("/onboarding", json={"name": "amb", "grammar": AMBIGUOUS, "pairs": pairs, "budget_s": 900,
                                           "tenant": "onboarder"})
    run.raise_for_status()
    job = run.json()["id"]
    deadline = time.monotonic() + 300
    while client.get(f"/onboarding/{job}").json()["stage"] != "dataset" and time.monotonic() < deadline:
        time.sleep(0.5)
    during = _probe_seconds(client)
    status = client.get(f"/onboarding/{job}").json()
    client.delete(f"/onboarding/{job}")
    progress(f"  probe alone {statistics.median(alone):.2f} s, during the dataset check "
             f"{statistics.median(during):.2f} s (stage then: {status['stage']})")
    return {"alone_s": alone, "during_dataset_check_s": during, "stage_after": status["stage"]}


def _stalled_uploads(url: str) -> dict:
    """24 connections each declare a 59 MB adapter upload, send 50 MB of it (unless answered at once) and stall."""
    port = int(url.rsplit(":", 1)[1])
    server = next(c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port
                  and c.status == psutil.CONN_LISTEN)
    rss = lambda: psutil.Process(server).memory_info().rss >> 20  # noqa: E731
    before, answers, sockets = rss(), [], []
    head = (f"POST /adapters HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {59 << 20}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    chunk = b"\0" * (1 << 20)
    for _ in range(24):
        connection = socket.create_connection(("127.0.0.1", port), timeout=5)
        sockets.append(connection)
        connection.sendall(head)
        connection.settimeout(0.5)
        try:
            answer = connection.recv(200)  # a refusal comes before any of the body is read
        except TimeoutError:
            answer = b""
        if answer:
            answers.append(answer.split(b" ", 2)[1].decode())
            continue
        connection.settimeout(30)
        try:
            for _ in range(50):
                connection.sendall(chunk)
            answers.append("stalled")
        except OSError as exc:
            answers.append(type(exc).__name__)
    time.sleep(10)
    during = rss()
    for connection in sockets:
        connection.close()
    time.sleep(5)
    after = rss()
    progress(f"  stalled uploads: RSS {before} -> {during} -> {after} MiB; answers {answers}")
    return {"rss_before_mib": before, "rss_during_mib": during, "rss_after_mib": after,
            "refused_at_once": answers.count("429"), "stalled": answers.count("stalled"), "answers": answers}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="nl2dsl-isolation-"))
    results: dict = {"command": COMMAND, "finished": None}
    env = {"NL2DSL_ONBOARDING_DIR": str(work / "onboarding"), "NL2DSL_TENANT_MAX_CONCURRENCY": "16"}
    with local_server(env=env, log=work / "server.log") as url, \
            httpx.Client(base_url=url, timeout=600) as client:
        progress("the prefix cache's timing oracle")
        results["oracle"] = _oracle(client)
        progress("a cache of one's own, within a tenant")
        results["own_cache"] = _own_cache(client)
        progress("fair share on (NL2DSL_ENGINE_SLOTS at its default)")
        results["fair_share_on"] = _fair_share(url, client)
        progress("an onboarding run's dataset check on an ambiguous grammar")
        results["onboarding"] = _onboarding(client)
        progress("24 stalled uploads")
        results["stalled_uploads"] = _stalled_uploads(url)
    with local_server(env={**env, "NL2DSL_ENGINE_SLOTS": "0"}, log=work / "server-off.log") as url, \
            httpx.Client(base_url=url, timeout=600) as client:
        progress("fair share off (NL2DSL_ENGINE_SLOTS=0)")
        results["fair_share_off"] = _fair_share(url, client)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M")
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(json.dumps(results, indent=2) + "\n")
    DOC.write_text(render(results))
    progress(f"wrote {DATA.relative_to(ROOT)} and {DOC.relative_to(ROOT)}")


def _median(samples: list, key: str | None = None) -> float:
    return statistics.median(s[key] for s in samples) if key else statistics.median(samples)


def render(r: dict) -> str:
    """docs/ISOLATION.md from the data (no number in it is typed by hand)."""
    right, wrong = r["oracle"]["right"], r["oracle"]["wrong"]
    first, again = r["own_cache"]["first"], r["own_cache"]["again"]
    on, off, onboarding = r["fair_share_on"], r["fair_share_off"], r["onboarding"]
    uploads = r["stalled_uploads"]
    lines = [
        "# Tenants sharing one replica: what one can do to another, measured",
        "",
        f"`{r['command']}` on a 2-core CPU with the embedded model, {r['finished']} (generated from",
        "docs/bench/isolation.json; docs/SECURITY.md, 14-21, says what each attack did before).",
        "",
        "| what | measured | value |",
        "|---|---|---|",
        f"| prefix cache oracle: another tenant's context guessed right | median time to first token, prompt tokens "
        f"from the cache | {_median(right, 'ttft_s'):.3f} s, {_median(right, 'cached_tokens'):.0f} of "
        f"{_median(right, 'prompt_tokens'):.0f} |",
        f"| ... guessed wrong | the same | {_median(wrong, 'ttft_s'):.3f} s, {_median(wrong, 'cached_tokens'):.0f} of "
        f"{_median(wrong, 'prompt_tokens'):.0f} |",
        f"| a tenant's first request (its cache cold) | time to first token | {_median(first, 'ttft_s'):.3f} s |",
        f"| its repeat (its own cache) | time to first token, tokens from the cache | {_median(again, 'ttft_s'):.3f} "
        f"s, {_median(again, 'cached_tokens'):.0f} of {_median(again, 'prompt_tokens'):.0f} |",
        f"| another tenant's `/generate` alone | median s | {_median(on['alone_s']):.2f} |",
        *[f"| ... beside one tenant's 16 long generations (sent right after the probe's own requests), {case}: its "
          f"first request; its next ones | s (ratio to "
          f"alone); median s (ratio) | {r_['first_beside_hog_s'][0]:.2f} "
          f"({r_['first_beside_hog_s'][0] / _median(r_['alone_s']):.2f}); {_median(r_['beside_hog_s']):.2f} "
          f"({_median(r_['beside_hog_s']) / _median(r_['alone_s']):.2f}) |"
          for case, r_ in (("fair share on", on), ("fair share off (`NL2DSL_ENGINE_SLOTS=0`)", off))],
        f"| another tenant's `/generate` during an onboarding run's dataset check (ambiguous grammar) | median s "
        f"(ratio to alone) | {_median(onboarding['during_dataset_check_s']):.2f} "
        f"({_median(onboarding['during_dataset_check_s']) / _median(onboarding['alone_s']):.2f}) |",
        f"| 24 uploads declaring 59 MB that stop after 50 MB (one tenant) | server RSS before, during, after (MiB) | "
        f"{uploads['rss_before_mib']}, {uploads['rss_during_mib']}, {uploads['rss_after_mib']} |",
        f"| ... | received and held on disk until they stalled; refused at once (429) | {uploads['stalled']}; "
        f"{uploads['refused_at_once']} |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["--render"]:  # docs/ISOLATION.md again from the data, without measuring
        DOC.write_text(render(json.loads(DATA.read_text())))
    else:
        main()
