"""LoRA fine-tuning with peft + transformers on the served base model; writes the adapter and its manifest.

The prompt is built by :func:`service.prompts.build_prompt`, the function serving uses, so the adapter sees
at inference exactly what it was trained on; the loss covers the DSL tokens and the end-of-turn token only.
A tenant adapter starts from the general one (``init_from``) and replays general data so general quality
holds (the study's result). Progress, loss and a held-out teacher-forced exact match are printed as it goes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import yaml

from service.config import PROJECT_ROOT
from service.cpu_features import native_bfloat16
from service.grammars import Example, Grammar
from service.model import EMBEDDED_NAME, base_fingerprint
from service.names import EVERY_TENANT
from service.training.batching import Encoder, exact_rows, target_logits
from service.training.batching import loss as batch_loss
from service.training.shots import RetrievedShots, share_for

__all__ = ["TrainConfig", "TrainResult", "train"]

_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainConfig:
    """What to train: ``name`` for ``dsl`` (optionally a ``tenant``'s data and grammar) into ``output``."""

    name: str
    dsl: str
    output: Path
    tenants: list[str] = field(default_factory=lambda: [EVERY_TENANT])
    steps: int = 60
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_steps: int = 4
    rank: int = 16
    alpha: int = 32
    target_modules: list[str] = field(default_factory=lambda: list(_TARGETS))
    init_from: Path | None = None
    #: Fraction of each batch drawn from ``replay`` examples (general data for a tenant adapter).
    replay_fraction: float = 0.5
    #: Few-shot examples in the training prompt; serving uses the same number for this adapter.
    examples: int = 0
    #: Retrieved few-shot examples (1..this many) in ``example_share`` of the training prompts, never the pair
    #: itself (service/training/shots.py); 0: none.
    retrieved_examples: int = 0
    #: None: measured before training (:func:`service.training.shots.share_for`): where the examples take off
    #: less than half the base model's loss on held-out answers, no prompt carries them.
    example_share: float | None = None
    #: Batches drawn this many at a time and made of rows of about the same length (less padding).
    length_groups: int = 8
    eval_every: int = 15
    eval_size: int = 48
    seed: int = 0
    #: "auto": bfloat16 on a GPU (Mistral-7B fits and trains fast); on the CPU float32 weights, with the
    #: arithmetic in bfloat16 where the CPU has it natively (AVX512-BF16 or AMX: a sql step 4.2 -> 2.7 s,
    #: docs/TRAINING.md), else float32 throughout.
    dtype: str = "auto"
    #: Wall-clock seconds training may take: once the first steps are timed, ``steps`` shrinks to fit.
    budget_s: float | None = None
    #: Under a budget that cannot reach this many steps (timed after a group, even at twice the speed), training
    #: stops there: the gate would not judge the adapter, and the rest of the budget is not spent on it.
    min_steps: int = 0
    #: Stop after this many held-out checks without a better score; the best checkpoint is what is written.
    patience: int | None = None
    #: Where training state is saved at each held-out check; a run with the same folder resumes from it.
    checkpoint_dir: Path | None = None


@dataclass
class TrainResult:
    output: Path
    steps: int
    first_loss: float
    last_loss: float
    heldout_exact_match: list[tuple[int, float]]
    wall_time_s: float
    #: Training tokens (prompt and target, padding excluded) per second of stepping.
    tokens_per_s: float = 0.0
    #: Why training ended before ``steps``: "budget", "early stop" or None.
    stopped: str | None = None
    #: The step whose weights were written (the best held-out score; the last step without checks).
    best_step: int | None = None
    resumed_from: int | None = None
    #: What the weights were kept in and what the arithmetic ran in ("float32", "float32, bfloat16 arithmetic").
    precision: str = ""
    #: The share of training prompts that carried retrieved examples, and the base model's held-out loss without
    #: and with them when it was measured to decide that share.
    example_share: float = 0.0
    example_losses: tuple[float, float] | None = None


def train(
    config: TrainConfig,
    *,
    model_path: str,
    grammar: Grammar,
    train_rows: list[Example],
    heldout_rows: list[Example],
    replay_rows: list[Example] = (),
    example_pool: list[Example] | None = None,
    data_files: list[Path] = (),
    progress: bool = True,
    on_progress: Callable[[int, int, float | None], None] | None = None,
) -> TrainResult:
    """Train a LoRA adapter and write it with its manifest; returns the loss and held-out scores.

    ``on_progress(step, total, score)`` is called after every step (``score`` None) and every held-out check.
    ``example_pool``: what retrieved examples in training prompts come from (serving's examples; default the
    training rows).
    """
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from service.progress import library_bars_on_terminal_only, progress_bar

    library_bars_on_terminal_only()
    started = time.monotonic()
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    # A GPU where there is one (the onboarding Job on the gpu profile), else the CPU.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype, compute = _precision(config.dtype, device)
    mixed = partial(torch.autocast, device.type, dtype=compute, enabled=compute is not None)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    if config.init_from:
        model = PeftModel.from_pretrained(base, str(config.init_from), is_trainable=True)
    else:
        lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=config.target_modules,
                          lora_dropout=0.0, task_type="CAUSAL_LM")
        model = get_peft_model(base, lora)
    model.to(device)
    model.train()

    shots, example_losses, note = None, None, ""
    if config.retrieved_examples:
        shots = RetrievedShots(example_pool or train_rows, k=config.retrieved_examples, share=config.example_share or 0,
                               seed=config.seed)
        if config.example_share is None:
            with mixed():
                example_losses = _base_losses_with_examples(model, tokenizer, grammar, config, shots,
                                                            heldout_rows[: config.eval_size])
            shots.share = share_for(*example_losses)
            note = (f"[{config.name}] the base model's held-out loss {example_losses[0]:.3f} without retrieved "
                    f"examples, {example_losses[1]:.3f} with them: {shots.share:g} of the training prompts carry them")
    encode = Encoder(tokenizer, grammar, examples=config.examples, shots=shots)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    total = [config.steps]  # shrunk once the budget is known in steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _learning_rate_factor(s, config.warmup_steps,
                                                                                             total[0]))
    n_replay = round(config.batch_size * config.replay_fraction) if replay_rows else 0
    losses: list[float] = []
    scores: list[tuple[int, float]] = []
    best: tuple[float, int, dict] | None = None
    first_step, resumed_from = 1, None
    state_path = config.checkpoint_dir / "state.pt" if config.checkpoint_dir else None
    if state_path is not None and state_path.exists():
        from peft import set_peft_model_state_dict

        state = torch.load(state_path, weights_only=False, map_location=device)
        set_peft_model_state_dict(model, state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.setstate(state["rng"])
        losses, scores, total[0] = state["losses"], state["scores"], state["total"]
        best = state["best"]
        first_step = resumed_from = state["step"] + 1
    stepping_s, first_step_s, tokens, stopped, eval_every = 0.0, 0.0, 0, None, config.eval_every
    bar = progress_bar(total=total[0], initial=first_step - 1, desc=f"train {config.name}", enabled=progress,
                       unit="step")
    if note:
        bar.write(note)
    step = first_step - 1
    pending: list = []
    timed = max(3, config.length_groups)  # steps timed before the budget is fitted
    while step < total[0]:
        step += 1
        step_started = time.monotonic()
        if not pending:
            groups = max(1, config.length_groups)
            rows = rng.sample(train_rows, min(len(train_rows), (config.batch_size - n_replay) * groups)) + rng.sample(
                list(replay_rows), min(len(replay_rows), n_replay * groups))
            pending = encode.batches(rows, config.batch_size, rng)
        encoded = pending.pop().to(device)
        with mixed():
            loss = batch_loss(model, encoded)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        stepping_s += time.monotonic() - step_started
        if step == first_step:
            first_step_s = stepping_s
        tokens += encoded.tokens
        bar.update()
        bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{schedule.get_last_lr()[0]:.1e}")
        if on_progress is not None:
            on_progress(step, total[0], None)
        if config.budget_s is not None and step - first_step == timed - 1:
            # The first batches timed, one of each length band: fit the rest into the budget (made again at every
            # held-out check). On NL2Bash three steps said 1.1 s a step and the run went on at 2.
            eval_every = _fit_to_budget(config, total, bar, step=step, started=started, eval_every=eval_every,
                                        step_s=(stepping_s - first_step_s) / (timed - 1))
            # The first steps are often the slowest: stop only if the budget could not hold the steps the gate
            # asks for even with the rest at twice the speed.
            if step + 2 * (total[0] - step) < config.min_steps:
                bar.write(f"[{config.name}] the budget holds about {total[0]} steps, under the {config.min_steps} "
                          "the gate asks for even at twice the speed: training stops here")
                stopped = "budget"
                break
        if step - (scores[-1][0] if scores else 0) >= eval_every or step == total[0]:  # checks evenly spaced
            check_started = time.monotonic()
            with mixed():
                em = _teacher_forced_exact_match(model, encode, heldout_rows[: config.eval_size])
            if config.budget_s is not None and step > first_step + 2:
                # Steps seldom cost what the first ones did (the machine's other work comes and goes): fit the
                # rest of the budget again from the steps so far, never past the planned steps.
                eval_every = _fit_to_budget(config, total, bar, step=step, started=started, eval_every=eval_every,
                                            step_s=(stepping_s - first_step_s) / max(1, step - first_step))
            if config.budget_s is not None:
                # Under a budget, checks may take at most a sixth of the stepping time: a check costs several
                # steps (a long-prompt DSL's 48 rows: about three), so short runs check less often.
                step_s = stepping_s / max(1, step - first_step + 1)
                eval_every = max(eval_every, math.ceil((time.monotonic() - check_started) / (step_s / 6)))
            scores.append((step, em))
            if on_progress is not None:
                on_progress(step, total[0], em)
            bar.write(f"[{config.name}] step {step}: loss {sum(losses[-5:]) / len(losses[-5:]):.4f}, "
                      f"held-out teacher-forced exact match {em:.3f}")
            model.train()
            if best is None or em >= best[0]:  # a tie goes to the later check, trained on more pairs
                best = (em, step, _lora_weights(model))
            if state_path is not None:
                state_path.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"weights": _lora_weights(model), "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(), "rng": rng.getstate(), "losses": losses,
                            "scores": scores, "total": total[0], "best": best, "step": step},
                           state_path.with_suffix(".tmp"))
                state_path.with_suffix(".tmp").replace(state_path)  # an interrupted save leaves the last one
            if config.patience and len(scores) > config.patience:
                checked_before = scores[-config.patience - 1][0]  # the check `patience` checks ago
                if best[1] <= checked_before:  # nothing better since
                    stopped = "early stop"
                    break
        if config.budget_s is not None and time.monotonic() - started > config.budget_s and step < total[0]:
            stopped = "budget"
            break
    bar.close()
    if stopped is None and total[0] < config.steps:
        stopped = "budget"  # the budget fitted fewer steps than planned
    # With early stopping, or cut short, the best checked weights are written; otherwise the last step's.
    kept_step = best[1] if best is not None and (config.patience or stopped) else step
    if kept_step != step:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, best[2])
    config.output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(config.output)
    (config.output / "README.md").unlink(missing_ok=True)  # peft's empty model card; manifest.yaml says it all
    wall = time.monotonic() - started
    result = TrainResult(config.output, step, losses[0], sum(losses[-5:]) / len(losses[-5:]), scores, wall,
                         tokens_per_s=tokens / stepping_s if stepping_s else 0.0, stopped=stopped,
                         best_step=kept_step,
                         resumed_from=resumed_from,
                         precision=_name(dtype) + (f", {_name(compute)} arithmetic" if compute else ""),
                         example_share=shots.share if shots else 0.0, example_losses=example_losses)
    _write_manifest(config, result, model_path=model_path, data_files=list(data_files))
    return result


def _precision(dtype: str, device):
    """(weights dtype, arithmetic dtype or None): what ``dtype`` ("auto" or a torch dtype's name) means on ``device``.

    "auto": bfloat16 weights on a GPU; on the CPU float32 weights (the optimizer and the written adapter too, as
    the CPU engine serves them), with the matrix products in bfloat16 under autocast where the CPU has it natively
    (AVX512-BF16 or AMX) and it measures faster there (:func:`_bfloat16_measures_faster`). Elsewhere float32
    throughout.
    """
    import torch

    if dtype != "auto":
        return getattr(torch, dtype), None
    if device.type != "cpu":
        return torch.bfloat16, None
    return torch.float32, torch.bfloat16 if native_bfloat16() and _bfloat16_measures_faster() else None


@functools.lru_cache(maxsize=1)
def _bfloat16_measures_faster() -> bool:
    """Whether a training-sized product (forward and backward, 800 x 576 x 1536) runs faster under bfloat16
    autocast than in float32 on this CPU, timed once per process (a few tenths of a second). The CPU's flags say
    it has bfloat16, not that it is fast: on a 2-core Xeon with AVX512-BF16 and no AMX, bench.training measured
    bfloat16 arithmetic at 0.56-0.61x of float32's tokens a second (docs/TRAINING.md), where another host had
    measured 1.3x."""
    import torch

    x, layer = torch.randn(800, 576), torch.nn.Linear(576, 1536)

    def seconds(bfloat16: bool) -> float:
        started = time.perf_counter()
        for _ in range(3):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
                layer(x).sum().backward()
        return time.perf_counter() - started

    seconds(True), seconds(False)  # kernels made and caches warm
    return faster(min(seconds(True) for _ in range(3)), min(seconds(False) for _ in range(3)))


def faster(bfloat16_s: float, float32_s: float) -> bool:
    """bfloat16 pays only when clearly faster (10%): a tie keeps float32's precision."""
    return bfloat16_s < 0.9 * float32_s


def _name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _learning_rate_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak at ``total`` steps."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def _lora_weights(model) -> dict:
    """A copy of the adapter's weights (what a checkpoint keeps)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def _fit_to_budget(config: TrainConfig, total: list[int], bar, *, step: int, started: float, eval_every: int,
                   step_s: float) -> int:
    """Set ``total[0]`` to the steps the rest of the budget holds at ``step_s`` a step, less its held-out checks
    (about a step each, at most ~8), never more than the planned steps; returns the check interval (more
    often when the steps are fewer, so the curve still has points and early stop a choice). The first step
    pays one-time set-up (9 s against 2.5 s for the next ones on sql), so ``step_s`` leaves it out."""
    left = config.budget_s - (time.monotonic() - started)
    checks = min(8, max(1, (total[0] - step) // max(1, eval_every)))
    fits = min(config.steps, max(step, step + int(left / max(step_s, 1e-6)) - checks))
    if fits != total[0]:
        total[0] = bar.total = fits
        eval_every = max(2, min(config.eval_every, fits // 6)) if fits < config.steps else config.eval_every
        bar.write(f"[{config.name}] the budget of {config.budget_s:.0f} s fits {fits} steps at {step_s:.1f} s a "
                  f"step (held-out check every {eval_every})")
    return eval_every


def _base_losses_with_examples(model, tokenizer, grammar: Grammar, config: TrainConfig, shots: RetrievedShots,
                               rows: list[Example]) -> tuple[float, float]:
    """The base model's mean loss on the held-out answers, its prompts without and with the nearest
    ``retrieved_examples`` (adapter weights off: a run continued from an adapter measures the base too)."""
    import torch

    def mean_loss(encode: Encoder) -> float:
        total, count = 0.0, 0
        for start in range(0, len(rows), 8):
            logits, gold, _ = target_logits(model, encode.batch(rows[start : start + 8], shots=True).to(device))
            total += torch.nn.functional.cross_entropy(logits.float(), gold, reduction="sum").item()
            count += len(gold)
        return total / max(1, count)

    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        losses = (mean_loss(Encoder(tokenizer, grammar, examples=config.examples)),
                  mean_loss(Encoder(tokenizer, grammar, examples=config.examples,
                                    shots=lambda ex: shots.nearest(ex, config.retrieved_examples))))
    model.train()
    return losses


def _teacher_forced_exact_match(model, encode: Encoder, rows: list[Example]) -> float:
    """Share of rows whose every target token is the model's argmax given the gold prefix (cheap, no decoding)."""
    import torch

    if not rows:
        return 0.0
    model.eval()
    with torch.no_grad():
        device = next(model.parameters()).device
        hits = sum(exact_rows(model, encode.batch(rows[start : start + 8]).to(device))
                   for start in range(0, len(rows), 8))
    return hits / len(rows)


def _relative(path: Path) -> str:
    """Paths inside the project are recorded relative to it, so a manifest reads the same on every machine."""
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def _write_manifest(config: TrainConfig, result: TrainResult, *, model_path: str, data_files: list[Path]) -> None:
    digest = hashlib.sha256()
    for path in data_files:
        digest.update(Path(path).read_bytes())
    manifest = {
        "name": config.name,
        "dsl": config.dsl,
        "tenants": config.tenants,
        "rank": config.rank,
        "base_model": {"id": Path(model_path).name or EMBEDDED_NAME, "fingerprint": base_fingerprint(model_path)},
        "prompt": {"examples": config.examples, "catalog_hints": False},
        "training": {
            "data": [_relative(p) for p in data_files],
            "data_sha256": digest.hexdigest()[:16],
            "hyperparameters": {**{k: (_relative(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()
                                   if k not in ("name", "dsl", "output", "tenants", "checkpoint_dir")},
                                "example_share": result.example_share},
            "example_losses": (dict(zip(("without", "with"), (round(x, 4) for x in result.example_losses), strict=True))
                               if result.example_losses else None),
            "steps": result.steps,
            "first_loss": round(result.first_loss, 4),
            "last_loss": round(result.last_loss, 4),
            "heldout_teacher_forced_exact_match": [[s, round(em, 3)] for s, em in result.heldout_exact_match],
            "wall_time_s": round(result.wall_time_s, 1),
            "tokens_per_s": round(result.tokens_per_s, 1),
            "stopped": result.stopped,
            "best_step": result.best_step,
            "precision": result.precision,
        },
    }
    if config.init_from:
        # Continued training: keep the lineage (the init adapter's own training) in this manifest.
        parent = yaml.safe_load((Path(config.init_from) / "manifest.yaml").read_text()) or {}
        parent_training = parent.get("training") or {}
        manifest["training"]["init_from"] = {
            "name": parent.get("name"),
            "dsl": parent.get("dsl"),
            "steps": parent_training.get("total_steps", parent_training.get("steps")),
            "wall_time_s": parent_training.get("total_wall_time_s", parent_training.get("wall_time_s")),
            "data_sha256": parent_training.get("data_sha256"),
        }
        manifest["training"]["total_steps"] = result.steps + (manifest["training"]["init_from"]["steps"] or 0)
        manifest["training"]["total_wall_time_s"] = round(
            result.wall_time_s + (manifest["training"]["init_from"]["wall_time_s"] or 0), 1
        )
    (config.output / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    (config.output / "training_log.json").write_text(json.dumps(asdict(result), default=str, indent=1))
