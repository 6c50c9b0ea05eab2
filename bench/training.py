"""Where a training step's time goes on this CPU, and what the shared-prefix batch saves: tokens/s side by side.

``python -m bench.training``. For cron (short prompts, short code), flow (long code) and sql (a schema in every
prompt), the same batches of 8 are trained in turns, three ways (four on a CPU with native bfloat16): the plain
full-sequence step (every row whole, the output layer on every position), the output layer on learned tokens
only, that plus the rows' common prompt prefix computed once (what ``service/training/batching.py`` does), and,
on a CPU with native bfloat16, that with the arithmetic in bfloat16 (what the trainer does there). A step is
forward, backward, clipping and the AdamW update with the trainer's LoRA (r=16 on all projections, float32
weights). The results go to ``docs/bench/results/training.json`` (docs/BENCHMARKS.md) and to the "Training speed"
section of docs/TRAINING.md.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time

from bench.results import ROOT, Comparison, interleaved, progress, save
from service.evaluation.sections import replace_section

COMMAND = "python -m bench.training"
DOC = ROOT / "docs" / "TRAINING.md"
SECTION = "bench.training"
#: (DSL, grammar file or None for a shipped one, pairs)
CASES = [("cron", "data/onboarding/cron/cron.lark", "data/onboarding/cron/pairs.jsonl"),
         ("flow", None, "data/flow/train.jsonl"),
         ("sql", None, "data/sql/train.jsonl")]
VARIANTS = ("plain", "targets only", "shared prefix + targets")
MIXED = "shared prefix + targets, bfloat16 arithmetic"
REPEATS = 3
BATCH = 8


def _model(model_path: str):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from service.training.trainer import _TARGETS

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=_TARGETS, task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, params, torch.optim.AdamW(params, lr=1e-4)


def _grammar(dsl: str, grammar_file: str | None):
    from service.config import Settings
    from service.grammars import GrammarRegistry, compile_grammar

    if grammar_file is None:
        return GrammarRegistry(Settings().grammars_dir).load().get(dsl)
    return compile_grammar(dsl, (ROOT / grammar_file).read_text(), origin="upload")


def _step(model, params, optimizer, batch, variant: str):
    """One training step of ``variant`` on ``batch``: seconds."""
    import torch

    from service.training.batching import loss

    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == MIXED):
        if variant == "plain":
            ids, labels, attention = batch.full()
            value = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        else:
            value = loss(model, batch)
    value.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - started


def main() -> None:
    import torch
    from transformers import AutoTokenizer

    from service.config import Settings
    from service.grammars import load_examples
    from service.model import resolve_model
    from service.training.batching import Encoder, collate
    from service.training.trainer import _precision

    # The bfloat16 way only where the trainer takes it: emulated bfloat16 is slower than float32.
    variants = VARIANTS + ((MIXED,) if _precision("auto", torch.device("cpu"))[1] else ())
    settings = Settings()
    model_path = resolve_model(settings.model, settings.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model, params, optimizer = _model(model_path)
    comparisons, facts, rows = [], {}, []
    for dsl, grammar_file, pairs_file in CASES:
        progress(f"{dsl}: {REPEATS} rounds of {len(variants)} ways to train the same batches of {BATCH}")
        encoder = Encoder(tokenizer, _grammar(dsl, grammar_file), examples=0)
        examples = load_examples(ROOT / pairs_file)
        chosen = random.Random(0).sample(examples, BATCH * 2)
        pairs = [[encoder.pair(ex) for ex in chosen[i : i + BATCH]] for i in (0, BATCH)]
        batches = {"plain": [collate(p, pad=tokenizer.pad_token_id, share=False) for p in pairs],
                   "targets only": [collate(p, pad=tokenizer.pad_token_id, share=False) for p in pairs],
                   "shared prefix + targets": [collate(p, pad=tokenizer.pad_token_id) for p in pairs]}
        batches[MIXED] = batches["shared prefix + targets"]
        tokens = sum(b.tokens for b in batches["plain"])
        seconds: dict[str, list[float]] = {v: [] for v in variants}

        def case(variant: str, batches=batches, seconds=seconds, tokens=tokens):
            async def timed() -> float:
                spent = sum(_step(model, params, optimizer, b, variant) for b in batches[variant])
                seconds[variant].append(spent)
                return tokens / spent

            return timed

        medians = asyncio.run(interleaved({v: case(v) for v in variants}, REPEATS, warmup=True))
        for variant in variants[1:]:
            comparisons.append(Comparison(
                group="LoRA training step (batch 8, r=16, 2 threads)", name=f"{dsl}: {variant}",
                value=medians[variant], baseline=medians["plain"], unit="tokens/s", versus=(variant, "plain"),
                goal="", note="training tokens (prompt + code, padding excluded) per second"))
        prompt = sum(len(p) for batch in pairs for p, _ in batch)
        target = sum(len(t) for batch in pairs for _, t in batch)
        width = sum(b.ids.shape[1] * b.ids.shape[0] for b in batches["plain"])
        shared = sum(b.prefix.shape[1] * b.ids.shape[0] for b in batches["shared prefix + targets"])
        facts[dsl] = {"prompt_tokens_per_row": prompt / (2 * BATCH), "code_tokens_per_row": target / (2 * BATCH),
                      "padding_share": 1 - (prompt + target) / width, "shared_prefix_share": shared / tokens,
                      **{f"tokens_per_s {v}": medians[v] for v in variants},
                      **{f"spread {v}": [round(tokens / max(s), 1), round(tokens / min(s), 1)]
                         for v, s in seconds.items()}}
        rows.append((dsl, facts[dsl], seconds, tokens))
    save("training", COMMAND, comparisons, facts)
    _write_section(rows, variants)


def _write_section(rows, variants: tuple[str, ...]) -> None:
    lines = ["## Training speed", "",
             "Where a LoRA training step's time goes on this 2-core CPU (batch 8, r=16 on all projections, "
             "float32 weights, 2 threads), and what `service/training/batching.py` saves: the same two batches "
             f"per DSL, trained {REPEATS} rounds each way, taking turns (median, range of the rounds in brackets). "
             "Every prompt starts with the DSL's system message, so the rows of a batch share their first tokens; "
             "the plain step computes them once per row and applies the 49K-word output layer at every "
             "position, though only the code's tokens are learned. The shared-prefix step gives the same loss "
             "and gradients (`tests/unit/test_batching.py`)."
             + (" Where the CPU has bfloat16 natively (AVX512-BF16 or AMX), the trainer also runs the arithmetic "
                "in bfloat16 under autocast, weights and optimizer in float32: the last way."
                if MIXED in variants else " This CPU has no native bfloat16: the trainer stays in float32."), "",
             "| DSL | prompt tokens / row | code tokens / row | shared prefix | padding | "
             + " | ".join(f"{v} tokens/s" for v in variants) + " | speed-up |",
             "|---|---|---|---|---|" + "---|" * len(variants) + "---|"]
    for dsl, fact, seconds, tokens in rows:
        cells = []
        for v in variants:
            lo, hi = tokens / max(seconds[v]), tokens / min(seconds[v])
            cells.append(f"{statistics.median(tokens / s for s in seconds[v]):.0f} [{lo:.0f}-{hi:.0f}]")
        speedup = fact[f"tokens_per_s {variants[-1]}"] / fact["tokens_per_s plain"]
        lines.append(f"| {dsl} | {fact['prompt_tokens_per_row']:.0f} | {fact['code_tokens_per_row']:.0f} | "
                     f"{fact['shared_prefix_share']:.0%} | {fact['padding_share']:.0%} | " + " | ".join(cells)
                     + f" | {speedup:.2f}x |")
    lines += ["", f"Produced by `{COMMAND}` ({time.strftime('%Y-%m-%d')})."]
    DOC.write_text(replace_section(DOC.read_text() if DOC.exists() else "", SECTION, "\n".join(lines)))
    progress(f"wrote the training-speed section of {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
