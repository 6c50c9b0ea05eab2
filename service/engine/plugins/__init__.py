"""vLLM plugins (``vllm.general_plugins`` entry points in pyproject.toml), loaded by vLLM in every process it
starts, the engine's worker included: the adapter guard (:mod:`.guard`) and the CPU LoRA op (:mod:`.lora_patches`
installs it; :mod:`.lora_plan` plans a batch, :mod:`.lora_products` computes it)."""
