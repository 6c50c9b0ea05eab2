"""The running service, used as its clients would: ready, a tenant's DSL, generations, a drain, the probes."""

from __future__ import annotations

import re
import threading
import time

import httpx

from deploy.image_check.process import REPORTS, ROOT, run

#: A grammar a tenant publishes at run time (POST /dsls): the store and the grammar sandbox write, under a
#: read-only root filesystem, to the emptyDirs only.
JSON_DSL = {
    "name": "json",
    "grammar": '?start: value\n?value: object | array | ESCAPED_STRING | SIGNED_NUMBER -> number\n'
               '  | "true" -> true | "false" -> false | "null" -> null\narray: "[" [value ("," value)*] "]"\n'
               'object: "{" [pair ("," pair)*] "}"\npair: ESCAPED_STRING ":" value\n'
               "%import common.ESCAPED_STRING\n%import common.SIGNED_NUMBER\n%import common.WS\n%ignore WS\n",
    "examples": [{"text": "a cat called Tom", "code": '{"name": "Tom", "kind": "cat"}'}],
}
REQUESTS = {
    "flow": {"dsl": "flow", "text": "when a form is submitted, post the answers to #sales"},
    "sql": {"dsl": "sql", "text": "count the orders per customer", "context": "orders(id, customer_id, total)"},
    "json": {"dsl": "json", "text": "a dog called Rex, 3 years old"},
}


def wait_ready(url: str, name: str, timeout_s: float) -> float:
    """Seconds until /readyz answers 200; fails early if the container stops."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        if run("podman", "inspect", "--format", "{{.State.Running}}", name).stdout.strip() != "true":
            raise SystemExit(f"the container stopped before it was ready: see {REPORTS / 'container.log'}")
        time.sleep(0.5)
    raise SystemExit(f"not ready after {timeout_s:.0f} s (the chart's startup probe budget)")


def parses(dsl: str, code: str) -> bool:
    """Whether ``code`` parses with the DSL's grammar, here (the service's own verdict is not trusted)."""
    import lark

    from service.grammars import load_grammar_file
    from service.grammars.grammar import parse_with

    if dsl == JSON_DSL["name"]:
        return parse_with(lark.Lark(JSON_DSL["grammar"], parser="earley"), code).valid
    return load_grammar_file(ROOT / "grammars" / f"{dsl}.lark").parse(code).valid


def publish(url: str, key: str) -> dict:
    """The tenant publishes :data:`JSON_DSL` (written to the store under $HOME)."""
    response = httpx.post(f"{url}/dsls", json=JSON_DSL, timeout=60, headers={"Authorization": f"Bearer {key}"})
    return {"status": response.status_code, "version": response.json().get("version")}


def generate(url: str, key: str, dsl: str) -> dict:
    """One request, and whether its code parses."""
    response = httpx.post(f"{url}/generate", json=REQUESTS[dsl], timeout=120,
                          headers={"Authorization": f"Bearer {key}"})
    body = response.json()
    code = body.get("code") or ""
    parsed = parses(dsl, code) if code else False
    return {"status": response.status_code, "code": code, "valid": body.get("valid"), "parses_here": parsed,
            "adapter": body.get("adapter")}


def _in_flight(metrics_url: str) -> float:
    text = httpx.get(f"{metrics_url}/metrics", timeout=2).text
    found = re.search(r"^nl2dsl_requests_in_flight (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def drain(url: str, metrics_url: str, key: str, name: str, concurrent: int, grace_s: float) -> dict:
    """SIGTERM while ``concurrent`` generations run: each must finish, a new connection must be refused, and
    the process must exit 0 within the pod's grace period."""
    results: list[dict] = []
    dsls = [("flow", "sql")[i % 2] for i in range(concurrent)]
    threads = [threading.Thread(target=lambda d=d: results.append(generate(url, key, d))) for d in dsls]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while (in_flight := _in_flight(metrics_url)) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    signalled = time.monotonic()
    run("podman", "kill", "--signal", "TERM", name)
    time.sleep(0.5)
    try:
        httpx.get(f"{url}/healthz", timeout=5)
        refused = False
    except httpx.TransportError:
        refused = True
    exit_code = int(run("podman", "wait", name, timeout=grace_s + 30).stdout.strip())
    exited_s = time.monotonic() - signalled
    for thread in threads:
        thread.join(timeout=60)
    return {"in_flight_at_sigterm": in_flight, "finished": sum(r["status"] == 200 and r["parses_here"]
                                                               for r in results),
            "sent": concurrent, "new_connection_refused": refused, "exit_code": exit_code,
            "sigterm_to_exit_s": round(exited_s, 1)}


def probes_after_failure(url: str, timeout_s: float) -> dict:
    """What the probes say once the engine has failed: /healthz 503 (the kubelet restarts the pod), /readyz why."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{url}/healthz", timeout=5)
            if health.status_code == 503:
                ready = httpx.get(f"{url}/readyz", timeout=5)
                return {"healthz": 503, "readyz": ready.status_code,
                        "reason": ready.json().get("error", {}).get("message")}
        except httpx.TransportError:
            pass
        time.sleep(1)
    return {"healthz": "still 200 or no answer", "after_s": timeout_s}
