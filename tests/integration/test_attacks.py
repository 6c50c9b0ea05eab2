"""Hostile tenants and broken clients against the real service (vLLM on the embedded model).

Each test is named after the attack it stops; docs/SECURITY.md lists them with what happened before.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from urllib.parse import urlparse

AMBIGUOUS = 'start: e\ne: "a" | e e\n'
LONG = {"dsl": "flow", "adapter": "base", "text": "describe every connector you know", "constrained": False,
        "max_tokens": 48, "examples": 0, "temperature": 0}


def test_an_ambiguous_grammar_cannot_stall_the_running_service(server):
    with server.client(key="alpha-key") as alpha, server.client(key=None) as probe, ThreadPoolExecutor(1) as pool:
        assert alpha.post("/dsls", json={"name": "amb", "grammar": AMBIGUOUS}).status_code == 201
        try:
            slow = pool.submit(alpha.post, "/validate", json={"dsl": "amb", "code": "a" * 200})
            time.sleep(0.5)  # the parse is under way
            assert probe.get("/healthz").status_code == 200
            assert not wait({slow}, timeout=0.2).done, "/healthz had to wait for the parse"
            assert slow.result().status_code == 400 and slow.result().json()["error"]["type"] == "parse_limit"
        finally:
            alpha.delete("/dsls/amb")


def test_grammars_the_engine_refuses_are_refused_at_upload_instead_of_failing_every_request(server):
    with server.client(key="alpha-key") as alpha:
        for grammar in ("start: X\nX: /(?<=a)b/\n", '%declare FOO\nstart: "a"\n'):
            r = alpha.post("/dsls", json={"name": "refused", "grammar": grammar})
            assert r.status_code == 400 and r.json()["error"]["detail"]["parser"] == "llguidance", r.text
            assert alpha.post("/generate", json={"dsl": "refused", "text": "x"}).status_code == 404


def test_a_client_chosen_request_id_cannot_abort_another_clients_generation(server):
    shared_id = {"X-Request-Id": "the-same-id"}
    with server.client(key="alpha-key") as victim, server.client(key="beta-key") as attacker:
        results = []
        running = threading.Thread(target=lambda: results.append(victim.post("/generate", json=LONG,
                                                                             headers=shared_id)))
        running.start()
        time.sleep(1.0)  # the victim's generation is under way
        aborted = attacker.post("/generate", json={**LONG, "timeout_s": 0.01}, headers=shared_id)
        running.join(timeout=300)
    assert aborted.status_code == 504
    body = results[0].json()
    assert results[0].status_code == 200 and body["finish_reason"] == "length", body
    assert body["usage"]["completion_tokens"] == LONG["max_tokens"]


def _raw_exchange(url: str, head: bytes) -> bytes:
    """Send only the request head (no body) and read what the server answers."""
    address = urlparse(url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as s:
        s.sendall(head)
        return s.recv(65536)


def test_a_huge_declared_body_is_answered_without_being_read(server):
    head = ("POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 10000000000\r\n{auth}\r\n")
    anonymous = _raw_exchange(server.url, head.format(auth="").encode())
    keyed = _raw_exchange(server.url, head.format(auth="Authorization: Bearer alpha-key\r\n").encode())
    assert anonymous.startswith(b"HTTP/1.1 401"), anonymous[:200]
    assert keyed.startswith(b"HTTP/1.1 413"), keyed[:200]
