"""The trainer's budget, early stop and resume, on a tiny randomly initialised Llama with the embedded tokenizer
(real peft and transformers; milliseconds a step, so the logic is tested, not the model)."""

from __future__ import annotations

import pytest
import yaml

from service.grammars import Example, compile_grammar
from service.training import trainer
from service.training.trainer import TrainConfig, _learning_rate_factor, train

ROWS = [Example(f"convert {i} km to miles", f"{i} km -> mi") for i in range(24)]
GRAMMAR = compile_grammar("units", 'start: /[0-9]+/ " km -> mi"\n', origin="upload")


def _config(tmp_path, **options) -> TrainConfig:
    return TrainConfig(**{"name": "units", "dsl": "units", "output": tmp_path / "adapter", "steps": 6,
                          "batch_size": 4, "warmup_steps": 1, "rank": 2, "alpha": 4, "eval_every": 2,
                          "eval_size": 4, **options})


def _train(config: TrainConfig, model: str):
    return train(config, model_path=model, grammar=GRAMMAR, train_rows=ROWS[:20], heldout_rows=ROWS[20:],
                 progress=False)


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tiny_model, tmp_path, monkeypatch):
    config = _config(tmp_path, checkpoint_dir=tmp_path / "checkpoint")
    checks = []
    real_check = trainer._teacher_forced_exact_match

    def interrupted_at_the_second_check(*args):
        checks.append(1)
        if len(checks) == 2:
            raise KeyboardInterrupt  # the machine went away at step 4; step 2's state was saved
        return real_check(*args)

    monkeypatch.setattr(trainer, "_teacher_forced_exact_match", interrupted_at_the_second_check)
    with pytest.raises(KeyboardInterrupt):
        _train(config, tiny_model)
    monkeypatch.setattr(trainer, "_teacher_forced_exact_match", real_check)
    result = _train(config, tiny_model)
    assert result.resumed_from == 3 and result.steps == 6
    assert [step for step, _ in result.heldout_exact_match] == [2, 4, 6]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_training_stops_early_when_the_held_out_score_stops_improving(tiny_model, tmp_path, monkeypatch):
    scores = iter([0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    monkeypatch.setattr(trainer, "_teacher_forced_exact_match", lambda *args: next(scores))
    result = _train(_config(tmp_path, steps=40, patience=2), tiny_model)
    assert result.stopped == "early stop" and result.steps == 6 and result.best_step == 2


def test_a_budget_shrinks_the_planned_steps_once_the_first_are_timed(tiny_model, tmp_path):
    result = _train(_config(tmp_path, steps=500, budget_s=0.001), tiny_model)  # spent by the first step or two
    assert result.stopped == "budget" and 1 <= result.steps <= 2 and result.tokens_per_s > 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()  # what was trained is still written


def test_the_learning_rate_warms_up_then_decays_to_five_percent():
    factors = [_learning_rate_factor(step, 4, 100) for step in range(101)]
    assert factors[0] == 0.25 and factors[3] == 1.0 and factors[4] == 1.0
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False))
    assert factors[100] == pytest.approx(0.05)


@pytest.mark.parametrize(("native", "measured", "dtype", "expected"), [
    (True, True, "auto", "bfloat16"), (True, False, "auto", None), (False, True, "auto", None),
    (True, True, "float32", None)])
def test_bfloat16_arithmetic_only_where_the_cpu_has_it_natively_and_it_measures_faster(monkeypatch, native, measured,
                                                                                        dtype, expected):
    import torch

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(trainer, "_bfloat16_measures_faster", lambda: measured)
    weights, compute = trainer._precision(dtype, torch.device("cpu"))
    assert weights == torch.float32
    assert compute == (getattr(torch, expected) if expected else None)


def test_bfloat16_is_chosen_only_when_clearly_faster():
    assert trainer.faster(0.8, 1.0) and not trainer.faster(0.95, 1.0) and not trainer.faster(1.6, 1.0)
    assert isinstance(trainer._bfloat16_measures_faster(), bool)


def test_mixed_precision_training_writes_a_float32_adapter_the_cpu_engine_serves(tiny_model, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(trainer, "_bfloat16_measures_faster", lambda: True)
    result = _train(_config(tmp_path), tiny_model)
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert weights and {w.dtype for w in weights.values()} == {torch.float32}
    assert result.steps == 6 and [step for step, _ in result.heldout_exact_match] == [2, 4, 6]
    manifest = yaml.safe_load((tmp_path / "adapter" / "manifest.yaml").read_text())
    assert manifest["training"]["precision"] == "float32, bfloat16 arithmetic"  # what a reader needs to redo it


def test_the_steps_a_budget_holds_are_fitted_again_when_steps_get_faster_never_past_the_plan(tmp_path):
    import time

    class Bar:
        total, lines = 0, []

        def write(self, line):
            self.lines.append(line)

    config, bar = _config(tmp_path, steps=400, budget_s=100.0, eval_every=50), Bar()
    total = [400]
    started = time.monotonic()
    # The first three steps took 2 s each (the machine was busy): 100 s hold about 50 steps.
    trainer._fit_to_budget(config, total, bar, step=3, started=started, eval_every=50, step_s=2.0)
    assert 40 <= total[0] <= 52 and bar.total == total[0] and "fits" in bar.lines[-1]
    # Steps now take a tenth of that: the rest of the budget holds more of the planned steps again.
    every = trainer._fit_to_budget(config, total, bar, step=30, started=started, eval_every=8, step_s=0.2)
    assert total[0] >= 400 - 1 and every == 50
    trainer._fit_to_budget(config, total, bar, step=30, started=started, eval_every=50, step_s=0.001)
    assert total[0] == 400  # never more than planned


def test_training_stops_at_once_when_the_budget_cannot_reach_the_steps_the_gate_asks_for(tiny_model, tmp_path):
    result = _train(_config(tmp_path, steps=10**6, budget_s=30.0, min_steps=10**6), tiny_model)
    assert result.stopped == "budget" and result.steps == 8  # one group of batches timed, then stopped
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_the_share_of_prompts_with_examples_is_measured_and_written_in_the_manifest(tiny_model, tmp_path):
    """Without an example share given, the trainer measures the base model's held-out loss without and with the
    nearest examples, decides the share from it, and writes both in the manifest."""
    from service.training.shots import share_for

    result = _train(_config(tmp_path, retrieved_examples=2), tiny_model)
    without, with_examples = result.example_losses
    assert without > 0 and with_examples > 0 and result.example_share == share_for(without, with_examples)
    training = yaml.safe_load((tmp_path / "adapter" / "manifest.yaml").read_text())["training"]
    assert training["example_losses"] == {"without": round(without, 4), "with": round(with_examples, 4)}
    assert training["hyperparameters"]["example_share"] == result.example_share
    given = _train(_config(tmp_path, retrieved_examples=2, example_share=0.5), tiny_model)
    assert given.example_losses is None and given.example_share == 0.5
