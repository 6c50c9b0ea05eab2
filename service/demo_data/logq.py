"""Log queries (``{app="checkout"} | where status >= 500 | since 1h | count by host``): the second onboarding demo.

A pipeline language, unlike flow's trigger/action programs, sql's clauses or cron's five fields: a stream
selector, then stages in a fixed order. Written apart from the other generators: its own vocabulary (services,
environments, levels, status classes, latencies in ms or seconds, time windows), and phrasing as people type it
in a search box or a chat (fragments in any order, "5xx" / "server errors" / "failed requests", "past hour" /
"last 60 min", missing words, typos). Deterministic for a seed.
``python -m service.demo_data.logq OUT.jsonl [N]`` writes N pairs (default 1,000).
"""

from __future__ import annotations

import random
from functools import partial

from service.demo_data import pairs as demo_pairs

__all__ = ["generate"]

_APPS = {"checkout": ["checkout", "the checkout service", "checkout svc"],
         "payments": ["payments", "the payment service", "payments api"],
         "auth": ["auth", "login service", "the auth service"],
         "search": ["search", "search api"],
         "inventory": ["inventory", "stock service"],
         "gateway": ["gateway", "the api gateway", "edge gateway"],
         "billing": ["billing", "invoicing"],
         "notifications": ["notifications", "the notifier", "email sender"]}
_ENVS = {"prod": ["prod", "production", "live"], "staging": ["staging", "stage"], "dev": ["dev", "development"]}
_LEVELS = {"error": ["errors", "error logs", "errs"], "warn": ["warnings", "warn lines"],
           "debug": ["debug output", "debug logs"], "fatal": ["fatal errors", "crashes"]}
_WINDOWS = {"5m": ["last 5 minutes", "past 5 min", "in the last five minutes"],
            "15m": ["last 15 minutes", "past 15 mins", "last quarter hour"],
            "30m": ["last 30 minutes", "past half hour", "last 30m"],
            "1h": ["last hour", "past hour", "in the last 60 min", "since an hour ago"],
            "6h": ["last 6 hours", "past six hours"],
            "24h": ["last 24 hours", "past day", "since yesterday"],
            "7d": ["last week", "past 7 days", "this week"]}
_GROUPS = {"host": ["host", "hosts", "server", "machine"], "region": ["region", "regions"],
           "status": ["status", "status code"], "path": ["path", "endpoint", "route"],
           "user_id": ["user", "user id"]}
_PATHS = ["/api/cart", "/api/orders", "/login", "/api/pay", "/health", "/search", "/api/users"]
_MESSAGES = ["timeout", "connection refused", "out of memory", "deadlock", "null pointer", "rate limited"]
_REGIONS = ["eu-west", "us-east", "ap-south"]
_TYPOS = {"errors": "erors", "service": "servcie", "last": "lsat", "hour": "huor", "requests": "reqeusts",
          "show": "shwo", "count": "cuont", "production": "prodution"}
_OPENERS = ["", "", "", "show me ", "find ", "give me ", "i need ", "can you pull ", "grep ", "query "]


def _condition(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(8)
    if kind == 0:
        return rng.choice(["5xx", "server errors", "failed requests", "status 500 and up"]), "status >= 500"
    if kind == 1:
        code = rng.choice([404, 401, 403, 429])
        return rng.choice([f"{code}s", f"status {code}", f"{code} responses"]), f"status == {code}"
    if kind == 2:
        ms = rng.choice([200, 500, 1000, 2000, 5000])
        said = rng.choice([f"slower than {ms}ms", f"taking more than {ms} ms", f"latency over {ms}ms"] +
                          ([f"over {ms // 1000}s", f"longer than {ms // 1000} seconds"] if ms >= 1000 else []))
        return said, f"latency_ms > {ms}"
    if kind == 3:
        method = rng.choice(["POST", "PUT", "DELETE"])
        return rng.choice([f"{method} requests", f"method {method}", f"only {method.lower()}s"]), \
            f'method == "{method}"'
    if kind == 4:
        path = rng.choice(_PATHS)
        return rng.choice([f"on {path}", f"hitting {path}", f"path containing {path}", f"for {path}"]), \
            f'path contains "{path}"'
    if kind == 5:
        message = rng.choice(_MESSAGES)
        return rng.choice([f"mentioning {message}", f'with "{message}" in the message', f"{message} messages"]), \
            f'message contains "{message}"'
    if kind == 6:
        region = rng.choice(_REGIONS)
        return rng.choice([f"in {region}", f"region {region}", f"from {region}"]), f'region == "{region}"'
    user = f"u_{rng.randrange(100, 999)}"
    return rng.choice([f"for user {user}", f"user {user}", f"by {user}"]), f'user_id == "{user}"'


def _one(rng: random.Random) -> tuple[str, str]:
    app = rng.choice(list(_APPS))
    said = [rng.choice(_APPS[app])]
    matchers = [f'app="{app}"']
    if rng.random() < 0.5:
        env = rng.choice(list(_ENVS))
        matchers.append(f'env="{env}"')
        said.append(rng.choice([f"in {w}" for w in _ENVS[env]] + [w for w in _ENVS[env]]))
    subject = "logs"
    if rng.random() < 0.4:
        level = rng.choice(list(_LEVELS))
        matchers.append(f'level="{level}"')
        subject = rng.choice(_LEVELS[level])
    stages = []
    conditions = [_condition(rng) for _ in range(rng.choice([0, 1, 1, 1, 2]))]
    conditions = [c for i, c in enumerate(conditions) if c[1] not in [d[1] for d in conditions[:i]]]
    if conditions:
        joiner = "or" if len(conditions) == 2 and rng.random() < 0.25 else "and"
        stages.append("where " + f" {joiner} ".join(code for _, code in conditions))
        said.append(f" {joiner} ".join(words for words, _ in conditions) if joiner == "or"
                    else " ".join(words for words, _ in conditions))
    if rng.random() < 0.8:
        window = rng.choice(list(_WINDOWS))
        stages.append(f"since {window}")
        said.append(rng.choice(_WINDOWS[window]))
    shape = rng.randrange(5)
    if shape == 0:
        stages.append("count")
        said.append(rng.choice(["how many", "count them", "just the count", "total number"]))
    elif shape in (1, 2):
        group = rng.choice(list(_GROUPS))
        name = rng.choice(_GROUPS[group])
        stages.append(f"count by {group}")
        words = rng.choice([f"by {name}", f"grouped by {name}", f"broken down per {name}", f"count per {name}"])
        if shape == 2:
            n = rng.choice([3, 5, 10])
            stages.append(f"top {n}")
            words = rng.choice([f"top {n} {name}s", f"which {n} {name}s have the most", f"{words}, top {n}"])
        said.append(words)
    elif shape == 3:
        chosen = rng.sample(["path", "status", "host", "latency_ms", "message", "user_id"], rng.choice([1, 2, 3]))
        stages.append("fields " + ", ".join(chosen))
        said.append(rng.choice(["only ", "just ", "show ", "columns "]) + " and ".join(chosen))
        if rng.random() < 0.5:
            n = rng.choice([10, 20, 50, 100])
            stages.append(f"limit {n}")
            said.append(rng.choice([f"first {n}", f"max {n} lines", f"limit {n}", f"{n} rows"]))
    elif rng.random() < 0.5:
        n = rng.choice([10, 20, 50, 100])
        stages.append(f"limit {n}")
        said.append(rng.choice([f"first {n}", f"max {n} lines", f"limit {n}", f"latest {n}"]))
    head, rest = said[0], said[1:]
    if rng.random() < 0.4:
        rng.shuffle(rest)  # people name the window or the grouping first as often as last
    text = f"{subject} from {head} " + " ".join(rest) if rng.random() < 0.6 else f"{head} {subject} " + " ".join(rest)
    code = "{" + ", ".join(matchers) + "}" + "".join(f" | {stage}" for stage in stages)
    return text.strip(), code


def _shorter(rng: random.Random, text: str) -> str:
    """Now and then a word left out or swapped, as in "errors in api" for "errors from the api"."""
    if rng.random() < 0.15:
        text = text.replace(" from ", " in ", 1).replace(" the ", " ", 1)
    return text


_messy = partial(demo_pairs.roughen, openers=_OPENERS, typos=_TYPOS, endings=["?", " pls", " asap", "."], then=_shorter)


def generate(n: int, *, seed: int = 0) -> list[dict[str, str]]:
    """``n`` pairs ``{"text", "code"}``."""
    return demo_pairs.generate(n, seed, _one, _messy)


if __name__ == "__main__":
    demo_pairs.main(generate)
