"""Every Prometheus metric of the service, defined once. Names ``nl2dsl_*``, durations in seconds.

Labels stay bounded: ``dsl`` and ``adapter`` come from the registries (never raw input), ``status`` is an
HTTP status class or error type. vLLM's own engine metrics (``vllm:*``) share the default registry.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "COMPLETION_TOKENS",
    "INVALID_OUTPUTS",
    "IN_FLIGHT",
    "PROMPT_TOKENS",
    "QUEUE_WAIT",
    "REQUEST_DURATION",
    "TIME_TO_FIRST_TOKEN",
]

# 10 ms .. 60 s: a cached CPU decode step is ~50 ms, a long CPU generation tens of seconds.
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0)

REQUEST_DURATION = Histogram(
    "nl2dsl_request_duration_seconds",
    "End-to-end duration of POST /generate.",
    ["dsl", "adapter", "status"],
    buckets=_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "nl2dsl_queue_wait_seconds", "Time a request waited in the engine queue.", ["dsl", "adapter"], buckets=_BUCKETS
)
TIME_TO_FIRST_TOKEN = Histogram(
    "nl2dsl_time_to_first_token_seconds", "Time to the first generated token.", ["dsl", "adapter"], buckets=_BUCKETS
)
PROMPT_TOKENS = Counter("nl2dsl_prompt_tokens", "Prompt tokens processed.", ["dsl", "adapter"])
COMPLETION_TOKENS = Counter("nl2dsl_completion_tokens", "Tokens generated.", ["dsl", "adapter"])
INVALID_OUTPUTS = Counter(
    "nl2dsl_invalid_outputs", "Generated code that does not parse, by cause (length, grammar).", ["dsl", "cause"]
)
IN_FLIGHT = Gauge("nl2dsl_requests_in_flight", "Generate requests being served now.")
