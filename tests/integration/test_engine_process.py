"""The CPU engine computes the model in its engine-core process, started on the bound cores (service.engine,
service/engine/plugins/): no worker process, and no engine core spinning on the cores the model computes on."""

from __future__ import annotations

import os
import re
from pathlib import Path

from service.engine.cpu import _ALL_CORES_UP_TO


def _thread_cores(pid: int) -> set[frozenset[int]]:
    """The cores each of ``pid``'s threads may run on, as a set of distinct core sets."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.add(frozenset(os.sched_getaffinity(int(task.name))))
        except (ProcessLookupError, FileNotFoundError):
            continue
    return found


def test_the_model_runs_in_the_engine_core_process_on_every_core(server, client):
    assert client.post("/generate", json={"dsl": "flow", "text": "post to #sales", "max_tokens": 4}).status_code \
        == 200
    log = server.log.read_text()
    loaders = re.findall(r"\((\w+) pid=(\d+)\).*Starting to load model", log)
    assert len(loaders) == 1, loaders
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > _ALL_CORES_UP_TO:  # vLLM's own rule: a worker process per NUMA node
        assert loaders[0][0] == "Worker"
        return
    assert loaders[0][0] == "EngineCore" and "(Worker pid=" not in log
    # Confined to the service's cores, free among them: no thread pinned to one core (OpenMP's binding would pin
    # the process's I/O threads to the first).
    assert _thread_cores(int(loaders[0][1])) == {frozenset(cores)}
