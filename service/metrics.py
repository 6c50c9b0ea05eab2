"""Every Prometheus metric of the service, defined once. Names ``nl2dsl_*``, durations in seconds.

Labels stay bounded: ``dsl`` and ``adapter`` come from the registries (never raw input; a request for an
unknown DSL counts as ``dsl="unknown"``), ``status`` is an HTTP status code or a short outcome word.
vLLM's own engine metrics (``vllm:*``: KV-cache use, running and waiting requests, ...) are registered by
the engine's stat logger in the same default registry and served by the same ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ADAPTER_EVICTIONS",
    "ADAPTER_LOADS",
    "COMPLETION_TOKENS",
    "GRAMMAR_COMPILE",
    "INVALID_OUTPUTS",
    "IN_FLIGHT",
    "PROMPT_TOKENS",
    "QUEUED",
    "QUEUE_WAIT",
    "REQUESTS",
    "REQUEST_DURATION",
    "SAFETY_BLOCKS",
    "TIME_PER_OUTPUT_TOKEN",
    "TIME_TO_FIRST_TOKEN",
]

# 10 ms .. 60 s: a cached CPU decode step is ~50 ms, a long CPU generation tens of seconds.
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0)
# Per output token: ~5 ms on a GPU to ~1 s on a loaded CPU.
_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)
# Grammar compile (lark + llguidance check): ~10 ms for the shipped DSLs, bounded for uploads.
_COMPILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUEST_DURATION = Histogram(
    "nl2dsl_request_duration_seconds",
    "End-to-end duration of POST /generate that reached the engine, by outcome (ok, invalid, aborted, error).",
    ["dsl", "adapter", "status"],
    buckets=_BUCKETS,
)
REQUESTS = Counter(
    "nl2dsl_requests",
    "POST /generate requests by HTTP status (499: the client went away first).",
    ["dsl", "adapter", "status"],
)
QUEUE_WAIT = Histogram(
    "nl2dsl_queue_wait_seconds", "Time a request waited in the engine queue.", ["dsl", "adapter"], buckets=_BUCKETS
)
TIME_TO_FIRST_TOKEN = Histogram(
    "nl2dsl_time_to_first_token_seconds", "Time to the first generated token.", ["dsl", "adapter"], buckets=_BUCKETS
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "nl2dsl_time_per_output_token_seconds",
    "Decode time per generated token after the first.",
    ["dsl", "adapter"],
    buckets=_TOKEN_BUCKETS,
)
PROMPT_TOKENS = Counter("nl2dsl_prompt_tokens", "Prompt tokens processed.", ["dsl", "adapter"])
COMPLETION_TOKENS = Counter("nl2dsl_completion_tokens", "Tokens generated.", ["dsl", "adapter"])
ANSWER_CONFIDENCE = Histogram(
    "nl2dsl_answer_confidence",
    "The confidence of each answer (calibrated where the adapter has a calibration): a growing share of low ones "
    "is drift (the NL2DSLLowConfidence alert).",
    ["dsl", "adapter"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
INVALID_OUTPUTS = Counter(
    "nl2dsl_invalid_outputs", "Generated code that does not parse, by cause (length, grammar).", ["dsl", "cause"]
)
GRAMMAR_COMPILE = Histogram(
    "nl2dsl_grammar_compile_seconds",
    "Time to compile and check a grammar (lark and the engine's llguidance).",
    ["origin"],
    buckets=_COMPILE_BUCKETS,
)
ADAPTER_LOADS = Counter(
    "nl2dsl_adapter_loads", "LoRA adapters loaded from disk into the engine's host cache (max_cpu_loras)."
)
ADAPTER_EVICTIONS = Counter(
    "nl2dsl_adapter_evictions", "LoRA adapters evicted from the engine's host cache (least recently used)."
)
IN_FLIGHT = Gauge("nl2dsl_requests_in_flight", "Generate requests being served now (queued or generating).")
QUEUED = Gauge("nl2dsl_requests_queued", "Generate requests admitted that have not produced a token yet.")
SAFETY_BLOCKS = Counter("nl2dsl_safety_blocks", "Requests or outputs refused by the safety checks.", ["stage", "rule"])
