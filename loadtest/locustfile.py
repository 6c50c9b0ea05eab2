"""Locust scenarios for nl2dsl: ``locust -f loadtest/locustfile.py[,loadtest/shapes/spike.py] --host URL``.

User classes (pick some by name on the command line, or run them all by weight):

- ``MixedUser``: steady traffic across tenants and DSLs (flow, sql with its schema, contoso, fabrikam), plus
  some ``/validate`` calls.
- ``StreamingUser``: ``stream: true`` clients reading server-sent events; time to the first delta is
  reported as its own entry.
- ``BurstUser``: quiet, then several requests at the same instant.
- ``AdapterChurnUser``: cycles through every servable adapter (and the base model) and many tenant names,
  so with more adapters than the server's ``max_loras`` the engine keeps swapping adapters.
- ``BadRequestUser``: requests that must be refused (404, 422); the expected 4xx is a success, anything
  else (a 200, a 500, another shape) a failure.

``--thresholds FILE`` (default ``loadtest/thresholds.yaml``) is the release gate: a breach sets the exit code.
Shapes (ramp, spike, soak) live in ``loadtest/shapes/``; ``make loadtest`` / ``python -m loadtest.run`` wraps it all.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from pathlib import Path

import gevent.pool
from locust import HttpUser, between, events, task

from loadtest.gate import Row, check, load_thresholds, write_rows
from loadtest.requests_pool import random_ask

#: Sent as ``Authorization: Bearer`` by every user (an admin's key, so users can act as any tenant).
API_KEY = os.environ.get("NL2DSL_LOADTEST_API_KEY")
MAX_TOKENS = 96  # flows are 30-80 tokens; a cut output is a valid 200 (finish_reason "length"); see --max-tokens
SHARED_TENANTS = [f"tenant-{i:03d}" for i in range(50)]  # no adapter of their own: shared or base


def _check_generated(response) -> None:
    """A 200 whose code is valid, or cut by max_tokens; anything else fails the request."""
    if response.status_code != 200:
        response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
        return
    result = response.json()
    if not result["valid"] and result["finish_reason"] != "length":
        response.failure(f"finished output does not parse: {result['error']}")
    else:
        response.success()


class _Authenticated(HttpUser):
    abstract = True

    def on_start(self) -> None:
        if API_KEY:
            self.client.headers["Authorization"] = f"Bearer {API_KEY}"


class _Generating(_Authenticated):
    abstract = True
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        super().on_start()
        self.rng = random.Random()
        options = self.environment.parsed_options
        self.max_tokens = options.max_tokens if options else MAX_TOKENS

    def generate(self, body: dict, *, name: str) -> None:
        with self.client.post("/generate", json=body, name=name, catch_response=True) as response:
            _check_generated(response)


class MixedUser(_Generating):
    weight = 6

    @task(8)
    def generate_mixed(self) -> None:
        self.generate(random_ask(self.rng).body(max_tokens=self.max_tokens), name="/generate")

    @task(1)
    def validate(self) -> None:
        code = 'when forms.submitted(form: "Sales")\nthen chat.post_message(channel: "#sales", text: "New lead")'
        with self.client.post("/validate", json={"dsl": "flow", "code": code}, catch_response=True) as response:
            if response.status_code != 200 or not response.json()["valid"]:
                response.failure(f"valid code refused: HTTP {response.status_code} {response.text[:200]}")


class StreamingUser(_Generating):
    weight = 2

    @task
    def generate_streaming(self) -> None:
        body = random_ask(self.rng).body(max_tokens=self.max_tokens, stream=True)
        started = time.perf_counter()
        first: float | None = None
        with self.client.post("/generate", json=body, name="/generate (stream)", stream=True,
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
            event, result = None, None
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    if event == "delta" and first is None:
                        first = time.perf_counter() - started
                    elif event == "result":
                        result = json.loads(line.removeprefix("data: "))
                    elif event == "error":
                        response.failure(line)
                        return
            # Locust timed the response headers; the request lasts until the stream's last event.
            response.request_meta["response_time"] = (time.perf_counter() - started) * 1000
            if result is None:
                response.failure("the stream ended without a result event")
            elif not result["valid"] and result["finish_reason"] != "length":
                response.failure(f"finished output does not parse: {result['error']}")
            else:
                response.success()
        if first is not None:
            events.request.fire(request_type="SSE", name="/generate (stream) first token",
                                response_time=first * 1000, response_length=0, exception=None, context={})


class BurstUser(_Generating):
    weight = 1
    wait_time = between(5.0, 10.0)
    burst = 3

    @task
    def burst_of_requests(self) -> None:
        group = gevent.pool.Group()
        for _ in range(self.burst):
            group.spawn(self.generate, random_ask(self.rng).body(max_tokens=self.max_tokens), name="/generate (burst)")
        group.join()


class AdapterChurnUser(_Generating):
    weight = 2

    def on_start(self) -> None:
        super().on_start()
        adapters = self.client.get("/adapters", name="/adapters").json()
        # An adapter without a DSL of its own serves any; it is tried on flow.
        servable = [(a["name"], a["dsl"] or "flow") for a in adapters if not a.get("error")]
        targets = servable + [("base", "flow"), ("base", "sql")]
        self.rng.shuffle(targets)
        self.targets = itertools.cycle(targets)

    @task(3)
    def generate_with_next_adapter(self) -> None:
        adapter, dsl = next(self.targets)
        ask = random_ask(self.rng, tenant=None, dsl=dsl)
        body = {"dsl": dsl, "text": ask.text, "adapter": adapter, "max_tokens": self.max_tokens}
        if ask.context:
            body["context"] = ask.context
        self.generate(body, name="/generate (adapter churn)")

    @task(1)
    def generate_as_many_tenants(self) -> None:
        tenant = self.rng.choice(SHARED_TENANTS)
        body = random_ask(self.rng, tenant=None).body(max_tokens=self.max_tokens, tenant=tenant)
        self.generate(body, name="/generate (adapter churn)")


_BAD_REQUESTS: list[tuple[dict, int]] = [
    ({"dsl": "flow", "text": ""}, 422),
    ({"dsl": "flow", "text": "x" * 100_000}, 422),
    ({"dsl": "no-such-dsl", "text": "send an email"}, 404),
    ({"dsl": "flow", "text": "send an email", "adapter": "no-such-adapter"}, 404),
    ({"dsl": "flow", "text": "send an email", "max_tokens": 0}, 422),
    ({"dsl": "flow", "text": "send an email", "temperature": -1}, 422),
    ({"text": "send an email"}, 422),
]


class BadRequestUser(_Authenticated):
    weight = 1
    wait_time = between(1.0, 3.0)

    @task
    def bad_request(self) -> None:
        body, expected = random.choice(_BAD_REQUESTS)
        with self.client.post("/generate", json=body, name="/generate (bad input)", catch_response=True) as response:
            error = response.json().get("error") if response.headers.get("content-type", "").startswith(
                "application/json") else None
            if response.status_code != expected:
                response.failure(f"expected HTTP {expected}, got {response.status_code}")
            elif not (isinstance(error, dict) and {"type", "message"} <= error.keys()):
                response.failure(f"HTTP {expected} without the error shape: {response.text[:200]}")
            else:
                response.success()


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--thresholds", type=str, default="", help="release gate (default loadtest/thresholds.yaml)")
    parser.add_argument("--one-each", action="store_true", default=False,
                        help="exactly one user of each selected class (smoke runs), instead of by weight")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS,
                        help="per generation (smoke runs ask for fewer: every path, sooner)")


@events.init.add_listener
def _one_each(environment, **_kwargs) -> None:
    if environment.parsed_options and environment.parsed_options.one_each:
        for user_class in environment.user_classes:
            user_class.fixed_count = 1


@events.quitting.add_listener
def _gate(environment, **_kwargs) -> None:
    """Fail the run (exit code 1) when the statistics break a threshold; with ``--csv PREFIX``, also write them to
    ``PREFIX_final.json`` (what ``loadtest.run`` judges: Locust's CSV can miss the last second's requests)."""
    options = environment.parsed_options
    path = Path(options.thresholds) if options and options.thresholds else None
    rows = [Row.from_entry(e) for e in environment.stats.entries.values()]
    rows.append(Row.from_entry(environment.stats.total))
    if options and options.csv_prefix:
        write_rows(Path(f"{options.csv_prefix}_final.json"), rows)
    breaches = check(rows, load_thresholds(path))
    for breach in breaches:
        print(f"THRESHOLD BREACHED {breach}")
    if breaches:
        environment.process_exit_code = 1
    else:
        print("THRESHOLDS PASSED")
