"""The model-server protocol of the Gateway API Inference Extension, read the way its endpoint picker reads it.

The picker scrapes ``/metrics``: ``vllm:num_requests_waiting`` and ``vllm:kv_cache_usage_perc`` for load, and
the newest series of ``vllm:lora_requests_info`` (its value is the time it was written) for the adapters each
replica is running or queueing. Its LoRA affinity compares those names with the request's ``model``, so a
request for ``flow:beta`` must show up as ``flow:beta``: not the engine's internal name.
"""

from __future__ import annotations

import re
import threading
import time

_SERIES = re.compile(r'^(?P<name>[a-z_:]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$', re.M)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def picker_view(metrics_text: str) -> dict:
    """What the picker takes from one scrape: queue, KV-cache use, and the adapters of the newest LoRA series."""
    view: dict = {"waiting": None, "kv_cache": None, "running": set(), "queued": set(), "max_lora": None}
    newest = -1.0
    for match in _SERIES.finditer(metrics_text):
        name, value = match["name"], float(match["value"])
        if name == "vllm:num_requests_waiting":
            view["waiting"] = value
        elif name == "vllm:kv_cache_usage_perc":
            view["kv_cache"] = value
        elif name == "vllm:lora_requests_info" and value > newest:
            newest = value
            labels = dict(_LABEL.findall(match["labels"]))
            view["running"] = {a.strip() for a in labels["running_lora_adapters"].split(",") if a.strip()}
            view["queued"] = {a.strip() for a in labels["waiting_lora_adapters"].split(",") if a.strip()}
            view["max_lora"] = int(labels["max_lora"])
    return view


def test_the_picker_sees_the_adapter_under_the_name_the_client_sent(server, client):
    body = {"model": "flow:beta", "prompt": "when a form is submitted, post the answers to #sales",
            "max_tokens": 200, "constrained": False}
    done = threading.Event()

    def ask() -> None:
        with server.client() as other:
            other.post("/v1/completions", json=body)
        done.set()

    threading.Thread(target=ask, daemon=True).start()
    seen: set[str] = set()
    deadline = time.monotonic() + 300
    while not done.is_set() and time.monotonic() < deadline and "flow:beta" not in seen:
        view = picker_view(client.get("/metrics").text)
        seen |= view["running"] | view["queued"]
        time.sleep(0.1)
    assert "flow:beta" in seen, f"the picker saw {seen or 'no adapter'} while flow:beta ran"
    assert not any("#" in name or "/" in name for name in seen), seen
    view = picker_view(client.get("/metrics").text)
    assert view["max_lora"] == int(server.env["NL2DSL_MAX_LORAS"])
    assert view["waiting"] is not None and view["kv_cache"] is not None
    done.wait(300)
