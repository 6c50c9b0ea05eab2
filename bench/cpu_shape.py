"""The CPU peer at the production model's layer shape: the engine and llama.cpp on Mistral 7B's layers.

``python -m bench.cpu_shape [--layers N]``

``bench.cpu_peer`` compares the engine and llama.cpp on the embedded 135M model, whose decoding step is mostly
fixed costs (hundreds of small kernels, the engine's per-step Python) rather than weights read. What a team that
self-hosts the production model on CPUs gets depends on the other regime, so this benchmark builds a model with
Mistral 7B's layers (hidden 4096, MLP 14336, 32 query heads and 8 key/value heads of 128, rotary base 1e6) and the
embedded model's tokenizer and tied embeddings, ``N`` layers of them (8 by default, so that both copies fit this
machine's memory side by side), with seeded random weights, written twice with the same values:

- a Hugging Face folder in bfloat16, which the engine loads as the service opens it (compiled, LoRA on);
- a BF16 GGUF, which llama.cpp's server loads (query and key rows in GGUF's rotary order, as llama.cpp's own
  converter writes them; the 1-D tensors, the norms, in F32).

In one run, taking turns: time per output token at concurrency 1, 8 and 32, base model, unconstrained, greedy, 48
tokens, the same prompt token ids, both on every core; and the limit: the weights a decoding step reads at
bfloat16 over the bandwidth measured in the same run. A check that both read the same weights: the first tokens
each generates greedily for the same prompts. Then ``bench.engine``'s mixed-adapter workload on the engine (64
requests at once over 1, 8 or 64 copies of a random adapter with flow-general's rank and target modules, 64 slots).

Fewer layers than Mistral's 32 leave the per-step fixed costs a larger share of a step than the full model would:
the ratios here are, if anything, unfavourable to the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
from pathlib import Path

import httpx

from bench import workload
from bench.cpu_peer import (
    TOKENS,
    _engine_tpot,
    _llama_tpot,
    llama_server,
    memory_bandwidth_gbs,
    model_bytes,
    shipped_gguf_writer,
)
from bench.engine import _tokens_per_s
from bench.results import ROOT, Comparison, interleaved, progress, save
from service.config import Settings
from service.engine import open_engine

COMMAND = "python -m bench.cpu_shape"
REPEATS = 3
LOADS = (1, 8, 32)
CONTEXT = 1024  # llama.cpp's KV cache per slot: a prompt and its 48 tokens fit
MIXED = (1, 8, 64)  # distinct adapters over the 64 requests of the mixed-adapter case
SLOTS = max(MIXED)  # max_loras: every distinct adapter of the mixed case fits one batch
CHECK_TOKENS = 4  # greedy tokens compared between the two engines, per prompt
#: Mistral 7B's layer (its config.json): what a decoding step reads per layer.
MISTRAL_LAYER = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "head_dim": 128, "rope_theta": 1_000_000.0}


def shaped_weights(shape: dict, layers: int, vocab: int, *, seed: int = 0) -> dict:
    """Random bfloat16 weights of a Llama with ``shape``'s layers, in Hugging Face names and layout (std 0.02;
    norms 1)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    hidden = shape["hidden_size"]

    def normal(*size: int) -> torch.Tensor:
        return (torch.randn(*size, generator=gen) * 0.02).to(torch.bfloat16)

    def ones(size: int) -> torch.Tensor:
        return torch.ones(size, dtype=torch.bfloat16)

    weights = {"model.embed_tokens.weight": normal(vocab, hidden), "model.norm.weight": ones(hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        weights |= {p + "input_layernorm.weight": ones(hidden), p + "post_attention_layernorm.weight": ones(hidden)}
        weights |= {f"{p}{module}.weight": normal(*size) for module, size in _linear_shapes(shape).items()}
    return weights


def write_hf(folder: Path, tokenizer_dir: Path, shape: dict, layers: int, weights: dict) -> None:
    """``weights`` as a Hugging Face folder: the tokenizer and config of ``tokenizer_dir``'s model, the layers'
    sizes of ``shape``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((tokenizer_dir / "config.json").read_text())
    sizes = {k: v for k, v in shape.items() if k != "rope_theta"}
    config |= sizes | {"num_hidden_layers": layers, "tie_word_embeddings": True, "dtype": "bfloat16",
                       "rope_parameters": {"rope_theta": shape["rope_theta"], "rope_type": "default"}}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for file in tokenizer_dir.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens", "generation_config")):
            shutil.copy(file, folder / file.name)
    save_file({name: w.contiguous() for name, w in weights.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})


def _rotary_rows(w, heads: int):
    """Hugging Face's query/key rows in GGUF's rotary order (llama.cpp's converter does the same)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


#: Hugging Face name (after "model.layers.N.") -> GGUF name (after "blk.N.").
_GGUF_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def write_gguf(path: Path, shape: dict, layers: int, weights: dict) -> None:
    """``weights`` as a BF16 GGUF with the shipped GGUF's tokenizer and ``shape``'s layer sizes."""
    import gguf
    import torch

    sizes = {gguf.Keys.LLM.EMBEDDING_LENGTH: shape["hidden_size"],
             gguf.Keys.LLM.FEED_FORWARD_LENGTH: shape["intermediate_size"],
             gguf.Keys.LLM.BLOCK_COUNT: layers,
             gguf.Keys.Attention.HEAD_COUNT: shape["num_attention_heads"],
             gguf.Keys.Attention.HEAD_COUNT_KV: shape["num_key_value_heads"],
             gguf.Keys.Rope.DIMENSION_COUNT: shape["head_dim"],
             gguf.Keys.Rope.FREQ_BASE: shape["rope_theta"]}
    tmp = path.with_suffix(".partial")
    _, writer = shipped_gguf_writer(tmp, gguf.LlamaFileType.MOSTLY_BF16, sizes)
    heads = {"attn_q": shape["num_attention_heads"], "attn_k": shape["num_key_value_heads"]}
    for name, w in weights.items():
        if name.startswith("model.layers."):
            index, rest = name.removeprefix("model.layers.").split(".", 1)
            short = _GGUF_NAMES[rest.removesuffix(".weight")]
            target = f"blk.{index}.{short}.weight"
            if short in heads:
                w = _rotary_rows(w, heads[short])
        else:
            target = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}[name]
        if w.dim() == 1:
            writer.add_tensor(target, w.float().numpy(), raw_dtype=gguf.GGMLQuantizationType.F32)
        else:  # BF16 is stored as its bytes, two per value
            writer.add_tensor(target, w.contiguous().view(torch.uint8).numpy(),
                              raw_dtype=gguf.GGMLQuantizationType.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    tmp.rename(path)


def shaped_model(cache: Path, tokenizer_dir: Path, layers: int) -> tuple[Path, Path, int]:
    """The Hugging Face folder and the GGUF of the shaped model (made once, then reused), and the bytes a decoding
    step reads at bfloat16."""
    folder, path = cache / f"mistral-layers-{layers}", cache / f"mistral-layers-{layers}.BF16.gguf"
    vocab = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    if not (folder / "model.safetensors").exists() or not path.exists():
        progress(f"random weights: {layers} of Mistral 7B's layers, vocabulary {vocab}")
        weights = shaped_weights(MISTRAL_LAYER, layers, vocab)
        shutil.rmtree(folder, ignore_errors=True)
        write_hf(folder.with_suffix(".partial"), tokenizer_dir, MISTRAL_LAYER, layers, weights)
        folder.with_suffix(".partial").rename(folder)
        progress(f"wrote {folder}; the same values as a BF16 GGUF")
        write_gguf(path, MISTRAL_LAYER, layers, weights)
    return folder, path, model_bytes(folder) // 2  # model_bytes counts float32 bytes


def shaped_adapter(folder: Path, model: Path, *, like: Path, seed: int = 1) -> Path:
    """A random LoRA adapter for the shaped model with ``like``'s rank, alpha and target modules (the shipped
    flow-general's), in peft's format (made once)."""
    import torch
    from safetensors.torch import save_file

    if (folder / "adapter_model.safetensors").exists():
        return folder
    config = json.loads((like / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(model)
    rank, shape = config["r"], json.loads((model / "config.json").read_text())
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(shape["num_hidden_layers"]):
        for module, (out, in_) in _linear_shapes(shape).items():
            if module.split(".")[-1] not in config["target_modules"]:
                continue
            prefix = f"base_model.model.model.layers.{i}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = (torch.randn(rank, in_, generator=gen) * 0.01).to(torch.bfloat16)
            tensors[f"{prefix}.lora_B.weight"] = (torch.randn(out, rank, generator=gen) * 0.01).to(torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return folder


def _linear_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """A Llama layer's linear modules: name -> (out, in)."""
    hidden, mlp = config["hidden_size"], config["intermediate_size"]
    q, kv = config["num_attention_heads"] * config["head_dim"], config["num_key_value_heads"] * config["head_dim"]
    return {"self_attn.q_proj": (q, hidden), "self_attn.k_proj": (kv, hidden), "self_attn.v_proj": (kv, hidden),
            "self_attn.o_proj": (hidden, q), "mlp.gate_proj": (mlp, hidden), "mlp.up_proj": (mlp, hidden),
            "mlp.down_proj": (hidden, mlp)}


async def _first_tokens_engine(llm, prompts: list[list[int]]) -> list[list[int]]:
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import SamplingParams

    async def one(ids: list[int]) -> list[int]:
        sampling = SamplingParams(max_tokens=CHECK_TOKENS, temperature=0.0, ignore_eos=True)
        final = None
        async for out in llm.generate(TokensPrompt(prompt_token_ids=ids), sampling, os.urandom(8).hex()):
            final = out
        return list(final.outputs[0].token_ids)

    return [await one(p) for p in prompts]


async def _first_tokens_llama(client: httpx.AsyncClient, prompts: list[list[int]]) -> list[list[int]]:
    tokens = []
    for ids in prompts:
        body = {"prompt": ids, "n_predict": CHECK_TOKENS, "temperature": 0.0, "top_k": 1, "ignore_eos": True,
                "cache_prompt": False, "return_tokens": True}
        response = await client.post("/completion", json=body)
        response.raise_for_status()
        tokens.append(response.json()["tokens"])
    return tokens


async def main_async(layers: int) -> None:
    settings = Settings(dtype="bfloat16", max_loras=SLOTS, max_cpu_loras=SLOTS + 8)
    serving = workload.serving(settings)
    tokenizer_dir = Path(serving.engine.model)
    prompts = [p.prompt_token_ids for p in await workload.prompts(serving, max(LOADS))]
    folder, gguf_path, weight_bytes = shaped_model(settings.cache_dir / "models", tokenizer_dir, layers)
    cores = len(os.sched_getaffinity(0))
    facts: dict = {"layers (Mistral 7B's shape; Mistral has 32)": layers,
                   "weights read per decoding step at bfloat16 (MB)": round(weight_bytes / 1e6)}
    progress("memory bandwidth: reading 1 GiB of float32")
    bandwidth = memory_bandwidth_gbs(cores)
    limit = weight_bytes / (bandwidth * 1e9) * 1000
    facts[f"memory bandwidth, {cores} threads (GB/s)"] = round(bandwidth, 1)
    facts["limit at concurrency 1: weights / bandwidth (ms per output token)"] = round(limit, 1)
    logs = ROOT / "reports" / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    peer = f"llama.cpp bfloat16, {cores} threads"
    comparisons: list[Comparison] = []
    async with contextlib.AsyncExitStack() as stack:
        progress(f"engine (bfloat16, compiled, LoRA on) on {folder.name}")
        engine = await stack.enter_async_context(open_engine(settings, model=str(folder)))
        facts["engine start (s)"] = round(engine.startup_s, 1)
        url = stack.enter_context(llama_server(gguf_path, cores, slots=max(LOADS), context=CONTEXT,
                                                 log=logs / f"llama-server-shape-{layers}.log"))
        client = await stack.enter_async_context(httpx.AsyncClient(
            base_url=url, timeout=600, limits=httpx.Limits(max_keepalive_connections=0)))
        ours, theirs = await _first_tokens_engine(engine.llm, prompts), await _first_tokens_llama(client, prompts)
        pairs = list(zip(ours, theirs, strict=True))
        facts[f"same first {CHECK_TOKENS} greedy tokens, engine and llama.cpp (prompts)"] = \
            f"{sum(a == b for a, b in pairs)} of {len(pairs)}"
        facts["same first greedy token (prompts)"] = f"{sum(a[:1] == b[:1] for a, b in pairs)} of {len(pairs)}"
        for concurrency in LOADS:
            progress(f"concurrency {concurrency}: time per output token")
            medians = await interleaved({"engine": _engine_tpot(engine.llm, prompts, concurrency),
                                         peer: _llama_tpot(client, prompts, concurrency)}, REPEATS, warmup=True)
            for name, value in medians.items():
                facts[f"time per output token at concurrency {concurrency}, {name} (ms)"] = round(value, 1)
            comparisons.append(Comparison(
                "CPU peer at Mistral 7B's layer shape (time per output token)", f"bfloat16, concurrency {concurrency}",
                medians["engine"], medians[peer], "ms", ("nl2dsl engine (vLLM), bfloat16", peer),
                higher_is_better=False, goal="<= 1.3" if concurrency == 1 else "< 1.0",
                note=f"{layers} layers, random weights, the same values; greedy, {TOKENS} tokens; {cores} cores"))
            if concurrency == 1:
                comparisons += [Comparison(
                    "against the limit at Mistral 7B's layer shape (concurrency 1)", "time per output token, bfloat16",
                    medians[name], limit, "ms", (label, "weights / memory bandwidth"), higher_is_better=False,
                    goal="<= 1.5" if name == "engine" else "",
                    note="1.00 would read every bfloat16 weight once per token at the measured bandwidth")
                    for name, label in (("engine", "nl2dsl engine (vLLM), bfloat16"), (peer, peer))]
        comparisons += await _mixed_adapters(serving, engine.llm, shaped_adapter(
            folder.with_name(folder.name + "-adapter"), folder, like=workload.adapter(serving, "flow-general").path))
    save(f"cpu_shape-{layers}", f"{COMMAND} --layers {layers}", comparisons, facts)


async def _mixed_adapters(serving, llm, adapter: Path) -> list[Comparison]:
    """Tokens/s of ``bench.engine``'s mixed workload (64 requests at once, 12 tokens each) over 1, 8 or 64 copies
    of a random adapter of the shaped model with flow-general's rank and target modules, taking turns."""
    prepared = await workload.prompts(serving, 64, adapter="flow-general", max_tokens=48)
    progress(f"mixed adapters: 64 requests over {MIXED} adapters")
    medians = await interleaved({k: _tokens_per_s(llm, workload.mixed_jobs(prepared, k, adapter), len(prepared))
                                 for k in MIXED}, REPEATS, warmup=True)
    return [Comparison("mixed adapters at Mistral 7B's layer shape (tokens/s)", f"{k} distinct adapters in 64 requests",
                       medians[k], medians[1], "tokens/s", (f"{k} adapters", "1 adapter"),
                       goal=">= 0.9" if k == 8 else ">= 0.8", note=f"max_loras {SLOTS}, bfloat16")
            for k in MIXED if k > 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8, help="how many of Mistral 7B's layers (default 8)")
    asyncio.run(main_async(parser.parse_args().layers))


if __name__ == "__main__":
    main()
