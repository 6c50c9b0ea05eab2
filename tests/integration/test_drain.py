"""SIGTERM with requests in flight, on the session server at the end of the session: no new connections, what
fits in the drain finishes, what does not is cut and told so. Start-up: tests/integration/test_startup.py; the
per-tenant limit and an engine that dies: tests/integration/test_replicas.py."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.helpers import listening_process, wait_in_flight

BODY = {"dsl": "flow", "text": "when a form is submitted, post the answers to #sales", "max_tokens": 64}
LONG = {"dsl": "flow", "adapter": "base", "text": "describe every connector you know", "constrained": False,
        "max_tokens": 1000, "examples": 0, "temperature": 1.0, "seed": 3}


@pytest.mark.stops_server  # run after every other test (tests/conftest.py)
def test_sigterm_stops_accepting_and_drains_within_the_drain_timeout(server):
    """SIGTERM to the session server with a short request streaming and a long one in flight: no new
    connections, the short one finishes, the long one is cut when the drain ends, and told so."""
    results: dict[str, object] = {}
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    first_delta = threading.Event()

    def long() -> None:
        try:
            results["long"] = httpx.post(f"{server.url}/generate", json={**LONG, "tenant": "b"}, headers=headers,
                                         timeout=300)
        except httpx.TransportError as exc:
            results["long"] = exc

    def short() -> None:
        events = []
        try:
            with httpx.stream("POST", f"{server.url}/generate", headers=headers, timeout=300,
                              json={**BODY, "tenant": "a", "max_tokens": 24, "stream": True}) as r:
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        events.append(line.removeprefix("event: "))
                        first_delta.set()
                results["short"] = (r.status_code, events)
        except httpx.TransportError as exc:
            results["short"] = exc
        finally:
            first_delta.set()

    threads = [threading.Thread(target=long)]
    threads[0].start()
    wait_in_flight(server.url, 1, server.log)  # the long one is being served
    threads.append(threading.Thread(target=short))
    threads[1].start()
    assert first_delta.wait(timeout=300) and "short" not in results, results  # the short one is streaming
    process = listening_process(server.url)
    process.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    with pytest.raises(httpx.TransportError):  # no new connections once draining
        httpx.post(f"{server.url}/generate", json=BODY, headers=headers, timeout=5)
    for thread in threads:
        thread.join(timeout=300)
    assert results["short"] == (200, [*["delta"] * (len(results["short"][1]) - 1), "result"]), results
    cut = results["long"]
    assert isinstance(cut, httpx.Response) and cut.status_code == 503, cut
    assert "shutting down" in cut.json()["error"]["message"]
    # uvicorn re-raises the signal after its graceful shutdown: exit by SIGTERM, not a crash and not a hang.
    assert process.wait(timeout=120) in (0, -signal.SIGTERM)
