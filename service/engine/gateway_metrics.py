"""The engine metrics a Gateway API Inference Extension endpoint picker reads, with the names clients use.

The picker scrapes each replica's ``/metrics`` for ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``
and ``vllm:lora_requests_info``; the last one's ``running_lora_adapters`` and ``waiting_lora_adapters`` labels
list the adapters in the engine's batch, and the picker sends a request to a replica that already lists the
request's ``model`` (LoRA affinity, docs/SCALE.md). So those labels must carry adapter names exactly as
clients write ``model``: ``flow:contoso``.

The engine cannot be given that name alone: vLLM tells adapters apart by name (``LoRARequest`` hashes and
compares ``lora_name``), and two tenants may each own a ``flow:mine``, or one adapter have two versions in one
batch. So the engine's name is the client's name plus ``#`` and the registry's unique id
(:func:`engine_name`), and the stat logger here drops the suffix before vLLM's Prometheus logger writes the
labels. The gauge keeps one series, the batch now (vLLM adds a series for every combination of names it
ever saw, an unbounded label set), and a label lists at most ``_MAX_NAMES`` names (the batch holds at most
``max_loras`` adapters; more waiting ones add nothing the picker needs): docs/SECURITY.md, 20. These
metrics are served on the metrics port, for the cluster's Prometheus and picker, never to tenants. Tied to
vLLM 0.32's ``PrometheusStatLogger.record`` and ``SchedulerStats``; tests/unit/test_gateway_metrics.py fails
if either changes shape.
"""

from __future__ import annotations

__all__ = ["client_name", "engine_name", "prometheus_logger"]

_SEPARATOR = "#"
_MAX_NAMES = 16


def engine_name(client: str, lora_id: int) -> str:
    """The engine's unique ``lora_name`` for an adapter clients call ``client``."""
    return f"{client}{_SEPARATOR}{lora_id}"


def client_name(engine: str) -> str:
    """The name clients use for an engine ``lora_name`` (names never hold ``#``: service.names)."""
    return engine.rpartition(_SEPARATOR)[0] or engine


def _by_client_name(counts: dict[str, int]) -> dict[str, int]:
    """The engine's counts by client name, the ``_MAX_NAMES`` names with the most requests (then by name)."""
    merged: dict[str, int] = {}
    for name, count in counts.items():
        merged[client_name(name)] = merged.get(client_name(name), 0) + count
    return dict(sorted(merged.items(), key=lambda item: (-item[1], item[0]))[:_MAX_NAMES])


def prometheus_logger():
    """vLLM's Prometheus stat logger, writing the LoRA labels with client names (a class: vLLM's factory)."""
    import dataclasses

    from vllm.v1.metrics.loggers import PrometheusStatLogger

    class ClientNamedPrometheusStatLogger(PrometheusStatLogger):
        def record(self, scheduler_stats, iteration_stats, *args, **kwargs):
            if scheduler_stats is not None:
                scheduler_stats = dataclasses.replace(
                    scheduler_stats,
                    running_lora_adapters=_by_client_name(scheduler_stats.running_lora_adapters),
                    waiting_lora_adapters=_by_client_name(scheduler_stats.waiting_lora_adapters))
                if self.gauge_lora_info is not None:  # one series: the batch now, not every batch seen
                    self.gauge_lora_info.clear()
            super().record(scheduler_stats, iteration_stats, *args, **kwargs)

    return ClientNamedPrometheusStatLogger
