"""nl2dsl: natural language to DSL code, served by vLLM with per-tenant LoRA adapters."""
