"""``nl2dsl onboard``: a team's grammar and pairs -> a checked dataset, a served DSL, a gated adapter, a report.

    dataset    every pair parsed with the grammar (rejects by line), duplicates out, train / held-out split
    register   the DSL published through the API (POST /dsls), its training pairs as retrieval examples
    baseline   the base model, constrained, with 0 and k retrieved examples, on the held-out pairs (a re-run
               keeps the last run's scores when none of what they depend on changed)
    train      a LoRA adapter on the train split within the time budget (steps from data size and budget,
               warm-up + cosine schedule, early stop on the held-out score, checkpoints: a re-run resumes)
    evaluate   the adapter as a candidate, with 0 and k examples, constrained (then without the grammar if the
               budget still has the time)
    gate       published under its name only if its best constrained configuration beats the best baseline on
               the same held-out pairs by ``margin`` and significantly (exact McNemar at ``alpha``), training
               reached a quarter of its planned steps (at most 100), and no output that finished by itself fails
               to parse; otherwise the baseline stays. A held-out set too small to show ``margin`` is refused
               before anything runs; so is a local run whose budget cannot reach the steps the gate asks for
    report     ONBOARDING.md / .png / .json in the work folder and inside the published adapter's archive

Everything goes through the service's API (``--url`` with an API key, or a local service started here on the
embedded model, with the store every later ``nl2dsl serve`` reads); only training runs in this process.
Re-running with more pairs continues from the adapter the last run published; re-running on the same pairs
trains it further.

Longer than ~400 lines on purpose: the stages above read in order, one function each, and their helpers (the kept
baselines' key, the gate, the withdrawal on failure) are used by this run only; the stages' own pieces already
live apart (dataset, plan, report, status, service.evaluation, service.training).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from nl2dsl_client import NL2DSLClient

from service.adapters import pack_adapter
from service.config import Settings
from service.evaluation.confidence import Calibration, reliability
from service.evaluation.paired import min_pairs, paired
from service.evaluation.runner import RunConfig, Summary, score_together
from service.grammars import Comparison, Grammar, compile_grammar
from service.local_server import local_server
from service.model import resolve_model
from service.names import EVERY_TENANT
from service.onboarding.dataset import Dataset, build_dataset
from service.onboarding.options import OnboardOptions
from service.onboarding.plan import FAST_STEP_S, PUBLISH_S, Plan
from service.onboarding.report import Report, write_report
from service.onboarding.status import Status

__all__ = ["OnboardConfig", "onboard"]


#: The options' defaults (service.onboarding.options), the one place they are written.
_DEFAULT = OnboardOptions()


@dataclass
class OnboardConfig:
    grammar: Path
    pairs: Path
    name: str
    work_dir: Path
    url: str | None = None
    api_key: str | None = None
    #: Requests are sent for this tenant (an admin's key acting for it); the adapter serves it.
    tenant: str | None = None
    #: How two programs are compared (service.grammars.comparison); the gate judges on its strongest score.
    compare: Comparison | None = _DEFAULT.compare
    start: str = _DEFAULT.start
    description: str = _DEFAULT.description
    budget_s: float = _DEFAULT.budget_s
    #: The adapter must beat the best baseline's held-out exact match by this much to be published.
    margin: float = _DEFAULT.margin
    #: The gate's significance level (exact McNemar on the held-out pairs) and the share of the planned
    #: training steps (3 epochs) an adapter must have had before it is judged, at most ``judged_after_steps``.
    #: A quarter: a 30-minute logq run cut by its budget to 156 of 338 steps scored 0.77 (docs/ONBOARDING.md);
    #: 2 of 18 steps is noise. At most 100 (800 pairs seen): 3 epochs of 10,000 pairs do not fit 30 minutes of
    #: a CPU, and flow's 317 of 2,000 planned steps scored 0.97.
    alpha: float = _DEFAULT.alpha
    min_step_share: float = 0.25
    judged_after_steps: int = 100
    examples: int = _DEFAULT.examples
    heldout: int = _DEFAULT.heldout
    #: The team's own held-out pairs instead of a split of ``pairs``.
    heldout_file: Path | None = None
    #: Fixed training steps instead of planning them from the data and the budget.
    steps: int | None = _DEFAULT.steps
    epochs: float = 3.0
    batch_size: int = 8
    learning_rate: float = 1e-3
    rank: int = 16
    max_tokens: int = _DEFAULT.max_tokens
    concurrency: int = 8
    seed: int = 0
    command: str = ""
    #: Where the run's progress is kept as JSON (an onboarding job's status); None: only the log.
    status_file: Path | None = None
    stages: list[tuple[str, float]] = field(default_factory=list)
    #: When the run started (time.monotonic()): what the budget counts from.
    started_at: float = field(default_factory=time.monotonic)


def onboard(config: OnboardConfig) -> Report:
    """Run every stage; the report says whether the adapter was published and why."""
    status = Status(config.status_file)
    try:
        report = _onboard(config, status)
    except BaseException as exc:
        cause = (str(exc).strip().splitlines() or [""])[0]
        left = status.data.get("left_behind")
        status.update(state="failed", error=f"{type(exc).__name__}: {cause}" + (f"; {left}" if left else ""))
        raise
    status.update(state="published" if report.published else "not published", stage=None, report=report)
    return report


def _onboard(config: OnboardConfig, status: Status) -> Report:
    started = config.started_at = time.monotonic()
    config.work_dir.mkdir(parents=True, exist_ok=True)
    text = config.grammar.read_text(encoding="utf-8")
    grammar = compile_grammar(config.name, text, start=config.start, description=config.description,
                              source=config.grammar.name, origin="upload", compare=config.compare)
    # A re-run that continues from the published adapter keeps that run's held-out pairs: with more pairs, a
    # new split would hold out pairs the adapter was trained on.
    kept = config.work_dir / "heldout.jsonl"
    continuing = (config.work_dir / "published" / "adapter_config.json").exists() and kept.exists()
    heldout_file = config.heldout_file or (_copy(kept, config.work_dir / "heldout.previous.jsonl")
                                           if continuing else None)
    dataset = _stage(config, status, "dataset",
                     lambda: build_dataset(grammar, config.pairs, max_heldout=config.heldout, seed=config.seed,
                                           test_path=heldout_file))
    _say(f"dataset: {dataset.summary()}")
    for reject in dataset.rejects[:10]:
        where = f" (code line {reject.code_line}, column {reject.code_column})" if reject.code_line else ""
        _say(f"  rejected line {reject.line}: {reject.message.splitlines()[0]}{where}")
    _write_split(config.work_dir, dataset)
    report = Report(name=config.name, dsl=config.name, dataset=dataset.summary(), command=config.command,
                    budget_s=config.budget_s)
    status.update(report=report)
    needed = min_pairs(config.margin, config.alpha)
    _say(f"gate: a gain of at least {config.margin} significant at {config.alpha} (exact McNemar) needs at least "
         f"{needed} held-out pairs; this run holds out {len(dataset.heldout)}")
    if len(dataset.heldout) < needed:  # refused before anything is registered or trained
        return _refuse(config, report, f"{len(dataset.heldout)} held-out pairs cannot show a gain of "
                       f"{config.margin} at significance {config.alpha} (exact McNemar: at least {needed} pairs); "
                       "give more pairs, a held-out file, or a smaller --margin")
    code_tokens = _code_tokens(dataset)
    # No output longer than half again the longest held-out code can match: stopping there saves the time a
    # base model spends running on to max_tokens.
    max_tokens = report.max_tokens = min(config.max_tokens, math.ceil(1.5 * max(code_tokens)) + 8)
    # Training runs here, whatever serves: the gate's steps cost a CPU's step time, a GPU's next to nothing.
    gate_steps, step_s = _gate_steps(config, len(dataset.train)), 0.0 if _has_gpu() else FAST_STEP_S
    plan = Plan.before_start(config.budget_s, spent_s=time.monotonic() - started, local=config.url is None,
                             heldout=len(dataset.heldout), max_tokens=max_tokens,
                             code_tokens=sum(code_tokens) / len(code_tokens), gate_steps=gate_steps, step_s=step_s)
    _say(plan.describe() + ("" if config.url is None else " (a 2-core CPU's rates: the service at --url may be "
                                                          "faster; the plan is made again after the baseline)"))
    if config.url is None and (too_short := plan.too_short()):  # refused before the service starts
        return _refuse(config, report, too_short)
    with ExitStack() as stack:
        url = config.url or stack.enter_context(local_server(
            log=config.work_dir / "server.log", env={"NL2DSL_REQUEST_TIMEOUT_S": "3600"}))
        client = stack.enter_context(NL2DSLClient(url, api_key=config.api_key, timeout=600))
        existed = _dsl_exists(client, config.name)
        _stage(config, status, "register", lambda: _register(client, config, text, dataset))
        stack.push(_withdrawal(client, config.name, existed=existed, status=status))
        baseline = [RunConfig("base", config.name, tenant=config.tenant, adapter="base", examples=0,
                              max_tokens=max_tokens),
                    RunConfig(f"base + {config.examples} examples", config.name, tenant=config.tenant,
                              adapter="base", examples=config.examples, max_tokens=max_tokens)]
        key = _baseline_key(client.health().get("model", ""), text, config, dataset, max_tokens)
        kept_rows = _kept_baselines(config.work_dir / "report" / "ONBOARDING.json", key) if continuing else None
        if kept_rows:
            rows, eval_s = kept_rows
            _say("baseline: the last run's scores kept (the same model, grammar, examples and held-out pairs)")
            config.stages.append(("baseline", 0.0))
        else:
            rows = _stage(config, status, "baseline", lambda: _evaluate(url, config, baseline, dataset, grammar))
            eval_s = config.stages[-1][1]
        report.rows += rows
        if refused := round(max(s.refusal_rate * s.n for _, s in rows)):
            report.notes.append(f"{refused} held-out requests were refused by the safety policy (400 safety_blocked) "
                                "and count as wrong in every configuration; a tenant whose requests are meant to do "
                                "that needs a policy that allows it (grammars/tenants/)")
        report.baseline = {"key": key, "seconds": eval_s}
        status.update(report=report)
        candidate = f"{config.name}-candidate"
        # The adapter's outputs are about as long as the codes, not as long as the base model's (which often
        # runs on to max_tokens).
        generated = sum(s.completion_tokens for _, s in report.rows) / len(report.rows)
        shorter = (sum(code_tokens) / len(code_tokens) + 2) / max(generated, 1.0)
        plan = Plan.after_baseline(config.budget_s, spent_s=time.monotonic() - started, baseline_s=eval_s,
                                   shorter=shorter, gate_steps=gate_steps, step_s=step_s)
        _say(plan.describe())
        if too_short := plan.too_short():
            report.stages = config.stages
            return _refuse(config, report, too_short)
        train_budget = plan.training_s
        folder = _stage(config, status, "train", lambda: _train(config, grammar, dataset, train_budget, report,
                                                                 status))
        status.update(report=report)
        if too_few := _too_few_steps(report.training, _gate_steps(config, len(dataset.train))):
            report.stages = config.stages  # nothing to judge: the adapter is not evaluated
            return _refuse(config, report, too_few)
        _stage(config, status, "publish candidate",
               lambda: client.publish_adapter(pack_adapter(folder), name=candidate))
        try:
            # What the gate needs first (the constrained configurations), then the same without the grammar
            # if the budget still has the time they took.
            for constrained in (True, False):
                trained = [RunConfig(f"adapter{suffix}", config.name, tenant=config.tenant, adapter=candidate,
                                     examples=k, constrained=constrained, max_tokens=max_tokens)
                           for k, suffix in ((0, ""), (config.examples, f" + {config.examples} examples"))]
                left_s = config.budget_s - (time.monotonic() - started) - PUBLISH_S
                if not constrained and left_s < config.stages[-1][1]:
                    report.notes.append(f"not scored without the grammar: the budget had {max(left_s, 0):.0f} s "
                                        f"left and the constrained scoring took {config.stages[-1][1]:.0f} s")
                    break
                report.rows += _stage(config, status, "evaluate" if constrained else "evaluate without grammar",
                                      lambda configs=trained: _evaluate(url, config, configs, dataset, grammar))
                if constrained:
                    _score_candidates(url, config, report, dataset, grammar, started=started, status=status)
        finally:
            client.delete_adapter(candidate)
        report.published, report.verdict = _gate(report.rows, margin=config.margin, alpha=config.alpha,
                                                 training=report.training,
                                                 gate_steps=_gate_steps(config, len(dataset.train)))
        report.stages = config.stages
        if report.published:
            report.usage = _usage(url, config)
            report.verdict += "; " + _serve_with_better_shape(folder, report.rows)
            report.verdict += "; " + _serve_with_candidates(folder, report.rows)
            report.calibration = _calibrate(folder, report.rows)
            report.wall_s = time.monotonic() - started
            write_report(report, folder)  # the report travels with the adapter, into the store
            _stage(config, status, "publish", lambda: client.publish_adapter(pack_adapter(folder), name=config.name))
            shutil.copytree(folder, config.work_dir / "published", dirs_exist_ok=True)
        report.wall_s = time.monotonic() - started
        write_report(report, config.work_dir / "report")
    _say(("published" if report.published else "not published") + f": {report.verdict}")
    _say(f"report: {config.work_dir / 'report' / 'ONBOARDING.md'}")
    if report.published:
        _say(report.usage)
    return report


def _refuse(config: OnboardConfig, report: Report, verdict: str) -> Report:
    """End the run with ``verdict``, before training: the report says why; the baseline stays."""
    report.published, report.verdict = False, verdict
    report.wall_s = time.monotonic() - config.started_at
    write_report(report, config.work_dir / "report")
    _say(f"not published: {verdict}")
    return report


def _stage(config: OnboardConfig, status: Status, name: str, work):
    spent_s = time.monotonic() - config.started_at
    _say(f"== {name} ({spent_s:.0f} s in, {config.budget_s - spent_s:.0f} s of the budget left)")
    status.update(stage=name, stages=config.stages, budget_left_s=round(config.budget_s - spent_s))
    started = time.monotonic()
    result = work()
    config.stages.append((name, time.monotonic() - started))
    status.update(stages=config.stages)
    return result


def _say(line: str) -> None:
    print(f"[onboard] {line}", file=sys.stderr, flush=True)


def _copy(source: Path, target: Path) -> Path:
    shutil.copyfile(source, target)
    return target


def _write_split(folder: Path, dataset: Dataset) -> None:
    for split, rows in (("train", dataset.train), ("heldout", dataset.heldout)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(asdict(r)) + "\n" for r in rows))
    (folder / "rejects.json").write_text(json.dumps([asdict(r) for r in dataset.rejects], indent=1))


def _dsl_exists(client: NL2DSLClient, name: str) -> bool:
    from nl2dsl_client import APIError

    try:
        client.dsl(name)
    except APIError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _withdrawal(client: NL2DSLClient, name: str, *, existed: bool, status: Status):
    """An exit callback: a run that fails after registering its DSL withdraws it, if the run made it; a DSL an
    earlier run made stays (its adapter needs it), at the version this run registered. The status says which.
    A run that ends with a verdict keeps what it registered (the DSL is served, published adapter or not)."""

    def on_exit(exc_type, exc, traceback) -> bool:  # noqa: ANN001 - ExitStack's signature
        if exc_type is None:
            return False
        if existed:
            status.update(left_behind=f"the DSL {name!r} stays at the version this run registered (an earlier run "
                                      f"made it); POST /dsls/{name}/rollback restores an earlier one")
            return False
        try:
            client.delete_dsl(name)
            status.update(left_behind=f"the DSL {name!r} this run registered was withdrawn")
        except Exception as failure:  # the service may be what failed: say what stays
            status.update(left_behind=f"the DSL {name!r} this run registered could not be withdrawn "
                                      f"({type(failure).__name__})")
        return False

    return on_exit


def _register(client: NL2DSLClient, config: OnboardConfig, text: str, dataset: Dataset) -> None:
    """Publish the DSL (with how its programs compare: candidates vote by it) and its training pairs as retrieval
    examples (never the held-out ones)."""
    compare = {"compare": config.compare.model_dump(mode="json")} if config.compare else {}
    client.upload_dsl(name=config.name, grammar=text, start=config.start, description=config.description, **compare)
    jsonl = "".join(json.dumps({k: v for k, v in asdict(r).items() if v is not None}) + "\n"
                    for r in _retrieval_examples(dataset))
    added = client.add_examples(config.name, jsonl)
    refused = added.get("rejected_count", len(added["rejected"]))
    _say(f"registered {config.name}: {added['added']} examples for retrieval, {refused} refused")


def _evaluate(url: str, config: OnboardConfig, configs: list[RunConfig], dataset: Dataset,
              grammar: Grammar) -> list[tuple[RunConfig, Summary]]:
    """Every configuration on the held-out pairs, at the same time (the engine batches them together)."""
    summaries = score_together(url, configs, dataset.heldout, grammar, concurrency=2 * config.concurrency,
                               api_key=config.api_key)
    return list(zip(configs, summaries, strict=True))


def _retrieval_examples(dataset: Dataset) -> list:
    """The training pairs registered as retrieval examples (what the baselines with examples retrieve from)."""
    return dataset.train[:2000]


def _baseline_key(model: str, grammar_text: str, config: OnboardConfig, dataset: Dataset, max_tokens: int) -> str:
    """A digest of everything the baselines' scores depend on: the model, the grammar, the retrieval examples
    (the training pairs registered), the held-out pairs, the tenant, k, the output limit and how programs are
    compared."""
    parts = {"model": model, "grammar": grammar_text, "start": config.start, "tenant": config.tenant,
             "compare": config.compare.model_dump(mode="json") if config.compare else None,
             "examples": config.examples, "max_tokens": max_tokens,
             "heldout": [asdict(r) for r in dataset.heldout],
             "retrieval": [asdict(r) for r in _retrieval_examples(dataset)]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _kept_baselines(previous: Path, key: str) -> tuple[list[tuple[RunConfig, Summary]], float] | None:
    """The last run's baseline rows and the seconds they took, if that run's baselines had ``key``.

    A re-run on the same pairs (to train longer) then spends the budget on training, not on scoring the base
    model again; more pairs change the retrieval examples, so the baselines are scored again.
    """
    try:
        data = json.loads(previous.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("baseline", {}).get("key") != key:
        return None
    rows = [(RunConfig(**row["config"]), Summary(**{k: tuple(v) if isinstance(v, list) else v
                                                     for k, v in row["summary"].items()}))
            for row in data["rows"] if row["config"]["adapter"] == "base"]
    if any(len(summary.judged_hits) != summary.n for _, summary in rows):
        return None  # scored before per-pair results were kept: the paired gate needs them
    return (rows, float(data["baseline"]["seconds"])) if rows else None


def _code_tokens(dataset: Dataset) -> list[int]:
    """Tokens of each held-out code (the base model's tokenizer, as the service counts them)."""
    from transformers import AutoTokenizer

    settings = Settings()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(settings.model, settings.cache_dir))
    return [len(tokenizer(ex.code, add_special_tokens=False)["input_ids"]) for ex in dataset.heldout]


def _plan_steps(config: OnboardConfig, n_train: int) -> int:
    """Steps for ``epochs`` passes over the data (at least 10); the budget may cut them shorter."""
    if config.steps is not None:
        return config.steps
    return max(10, min(2000, math.ceil(config.epochs * n_train / config.batch_size)))


def _train(config: OnboardConfig, grammar: Grammar, dataset: Dataset, budget_s: float, report: Report,
           status: Status) -> Path:
    from service.training.trainer import TrainConfig, train

    settings = Settings()
    previous = config.work_dir / "published"
    output = config.work_dir / "adapter"
    shutil.rmtree(output, ignore_errors=True)
    steps = _plan_steps(config, len(dataset.train))
    eval_every = max(2, steps // 8)
    train_config = TrainConfig(
        name=config.name, dsl=config.name, output=output, tenants=[config.tenant] if config.tenant else [EVERY_TENANT],
        steps=steps, batch_size=config.batch_size, learning_rate=config.learning_rate, rank=config.rank,
        alpha=2 * config.rank, warmup_steps=min(4, max(1, steps // 10)), eval_every=eval_every,
        eval_size=min(48, len(dataset.heldout)), seed=config.seed, budget_s=budget_s, patience=3,
        min_steps=_gate_steps(config, len(dataset.train)),
        retrieved_examples=config.examples,
        checkpoint_dir=config.work_dir / "checkpoint",
        init_from=previous if (previous / "adapter_config.json").exists() else None,
    )
    _say(f"training up to {steps} steps (held-out check every {eval_every}) within {budget_s:.0f} s"
         + (f", continuing from {previous}" if train_config.init_from else ""))
    model = resolve_model(settings.model, settings.cache_dir)
    # Held-out pairs score the checks during training; they are never trained on.
    curve: list[tuple[int, float]] = []

    def progress(step: int, total: int, score: float | None) -> None:
        if score is not None:
            curve.append((step, score))
        status.update(progress={"step": step, "total": total, "score": score, "curve": curve},
                      budget_left_s=round(config.budget_s - (time.monotonic() - config.started_at)))

    # Training prompts retrieve their examples from what serving retrieves from: the registered examples.
    result = train(train_config, model_path=model, grammar=grammar, train_rows=dataset.train,
                   heldout_rows=dataset.heldout, example_pool=_retrieval_examples(dataset),
                   data_files=[config.pairs], on_progress=progress)
    shutil.rmtree(config.work_dir / "checkpoint", ignore_errors=True)  # finished: the next run starts anew
    report.curve = list(result.heldout_exact_match)
    report.training = {"steps": result.steps, "planned_steps": steps, "wall_time_s": result.wall_time_s,
                       "tokens_per_s": result.tokens_per_s,
                       "stopped": result.stopped, "best_step": result.best_step,
                       "resumed_from": result.resumed_from, "init_from": str(train_config.init_from or ""),
                       "example_share": result.example_share, "example_losses": result.example_losses}
    manifest_path = output / "manifest.yaml"
    manifest = yaml.safe_load(manifest_path.read_text())
    manifest["training"]["data"] = [config.pairs.name]  # the team's file, not a path of this machine
    manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return output


def _gate(rows: list[tuple[RunConfig, Summary]], *, margin: float, alpha: float,
          training: dict[str, Any] | None = None, gate_steps: int = 0) -> tuple[bool, str]:
    """Publish only a gain shown on the same held-out pairs: the best constrained adapter configuration against
    the best baseline, by the exact McNemar test at ``alpha``, at least ``margin`` of the held-out score the DSL
    is judged by (the strongest it declares: semantic, else canonical match), training that reached
    ``gate_steps``, and every finished constrained output parsing. The verdict names the score, the test, the
    counts and the p-value."""
    baselines = [(c, s) for c, s in rows if c.adapter == "base"]
    adapters = [(c, s) for c, s in rows if c.adapter != "base" and c.constrained]
    best_base_config, best_base = max(baselines, key=lambda cs: cs[1].judged)
    best_config, best = max(adapters, key=lambda cs: cs[1].judged)
    violations = sum(s.grammar_violation_rate for _, s in adapters)
    failed = [c.label + ("" if c.constrained else " (free)") for c, s in rows if s.error_rate > 0]
    if failed:
        return False, (f"requests failed while scoring {', '.join(failed)}: those scores are not measurements; "
                       "the baseline stays (the log says why)")
    if violations > 0:
        return False, (f"constrained adapter outputs that finished by themselves did not parse (rate "
                       f"{violations:.3f}); the baseline stays")
    if too_few := _too_few_steps(training, gate_steps):
        return False, too_few
    test = paired(best.judged_hits, best_base.judged_hits)
    counts = (f"{best.judged_by} match, exact McNemar on the same {test.n} held-out pairs: '{best_config.label}' "
              f"{best.judged:.3f} against '{best_base_config.label}' {best_base.judged:.3f}, "
              f"{test.wins} pairs won, {test.losses} lost, p = {test.p_value:.3g}")
    if test.gain < margin:
        return False, f"{counts}: a gain of {test.gain:.3f}, under the margin {margin}; the baseline stays"
    if alpha >= 1:  # asked for: e.g. a smoke test of the path to a served adapter
        return True, (f"{counts}: a gain of {test.gain:.3f} (margin {margin}); no significance was asked for "
                      "(alpha 1), so this shows no gain; every constrained output that finished parses")
    if test.p_value >= alpha:
        return False, f"{counts}: not significant at {alpha}; the baseline stays"
    return True, (f"{counts}: a gain of {test.gain:.3f} (margin {margin}), significant at {alpha}, and every "
                  "constrained output that finished parses")


def _gate_steps(config: OnboardConfig, n_train: int) -> int:
    """The training steps the gate asks for before it judges an adapter: ``min_step_share`` of the planned, at
    most ``judged_after_steps``."""
    return min(math.ceil(config.min_step_share * _plan_steps(config, n_train)), config.judged_after_steps)


def _too_few_steps(training: dict[str, Any] | None, gate_steps: int) -> str | None:
    """Why an adapter is not judged (training reached under ``gate_steps``); None if it is."""
    if not training or training.get("steps", 0) >= gate_steps:
        return None
    return (f"training reached {training.get('steps', 0)} of its {training.get('planned_steps')} planned steps, "
            f"under the {gate_steps} an adapter needs before it is judged (a quarter of the planned, at most 100); "
            "give the run a longer budget; the baseline stays")


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


#: Candidates an adapter is scored with (and served with by default when they score better, service/api/
#: generate/candidates.py): an odd number, so that two meanings cannot tie.
CANDIDATES = 3


def _score_candidates(url: str, config: OnboardConfig, report: Report, dataset: Dataset, grammar: Grammar, *,
                      started: float, status: Status) -> None:
    """Score the best constrained adapter configuration again with ``CANDIDATES`` candidates, if the budget has
    the time (about 1.5 times the constrained scoring of two configurations): whether the adapter serves with
    them by default is decided on these pairs (:func:`_serve_with_candidates`)."""
    single = [(c, s) for c, s in report.rows if c.adapter != "base" and c.constrained and c.candidates == 1]
    best_config, _ = max(single, key=lambda cs: cs[1].judged)
    needed_s = 1.5 * config.stages[-1][1]
    left_s = config.budget_s - (time.monotonic() - started) - PUBLISH_S
    if left_s < needed_s:
        report.notes.append(f"not scored with {CANDIDATES} candidates: the budget had {max(left_s, 0):.0f} s left "
                            f"and they take about {needed_s:.0f} s")
        return
    several = replace(best_config, label=f"{best_config.label}, {CANDIDATES} candidates", candidates=CANDIDATES)
    report.rows += _stage(config, status, "evaluate candidates",
                          lambda: _evaluate(url, config, [several], dataset, grammar))


def _serve_with_candidates(folder: Path, rows: list[tuple[RunConfig, Summary]]) -> str:
    """Write into the manifest the candidates the adapter serves with by default: ``CANDIDATES`` if they scored
    better than one generation of the same configuration on the held-out pairs (by the DSL's strongest score),
    else 1 (a tie: one is cheaper); what it says."""
    several = [(c, s) for c, s in rows if c.candidates > 1]
    if not several:
        return "served with one generation a request (candidates not scored)"
    config, with_candidates = several[0]
    alone = next(s for c, s in rows if replace(c, label=config.label, candidates=config.candidates) == config)
    n = config.candidates if with_candidates.judged > alone.judged else 1
    manifest_path = folder / "manifest.yaml"
    manifest = yaml.safe_load(manifest_path.read_text())
    manifest.setdefault("prompt", {})["candidates"] = n
    manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return (f"served with {n} candidate{'s' if n > 1 else ''} a request by default ({config.candidates} candidates "
            f"{with_candidates.judged:.3f}, one {alone.judged:.3f})")


def _calibrate(folder: Path, rows: list[tuple[RunConfig, Summary]]) -> dict[str, Any]:
    """Fit the adapter's confidence calibration on its best constrained configuration's held-out answers and
    write it into the manifest (``confidence: {a, b}``); what it measured: the calibration error and the
    thresholds' table before and after, each half scored with the calibration fitted on the other half."""
    _, best = max(((c, s) for c, s in rows if c.adapter != "base" and c.constrained), key=lambda cs: cs[1].judged)
    raw, right = list(best.confidences), list(best.judged_hits)
    calibration = Calibration.fit(raw, right)
    halves = [(range(0, len(raw), 2), range(1, len(raw), 2)), (range(1, len(raw), 2), range(0, len(raw), 2))]
    held_out: dict[int, float] = {}
    for fit_on, score_on in halves:
        fitted = Calibration.fit([raw[i] for i in fit_on], [right[i] for i in fit_on])
        held_out.update({i: fitted(raw[i]) for i in score_on})
    manifest_path = folder / "manifest.yaml"
    manifest = yaml.safe_load(manifest_path.read_text())
    manifest["confidence"] = {"a": round(calibration.a, 6), "b": round(calibration.b, 6), "fitted_on": len(raw),
                              "score": best.judged_by}
    manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return {"raw": asdict(reliability(raw, right)),
            "calibrated": asdict(reliability([held_out[i] for i in range(len(raw))], right)),
            "a": calibration.a, "b": calibration.b, "score": best.judged_by}


def _serve_with_better_shape(folder: Path, rows: list[tuple[RunConfig, Summary]]) -> str:
    """Write into the adapter's manifest the number of retrieved examples it is served with by default: the
    prompt shape its own constrained evaluation scored better by the DSL's strongest score (none on a tie:
    shorter prompts); what it says."""
    shapes = {c.examples or 0: s.judged for c, s in rows
              if c.adapter != "base" and c.constrained and c.candidates == 1}
    k = max(shapes, key=lambda n: (shapes[n], -n))
    manifest_path = folder / "manifest.yaml"
    manifest = yaml.safe_load(manifest_path.read_text())
    manifest.setdefault("prompt", {})["examples"] = k
    manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    scores = ", ".join(f"{n} examples {score:.3f}" for n, score in sorted(shapes.items()))
    return f"served with {k} retrieved examples by default ({scores})"


def _usage(url: str, config: OnboardConfig) -> str:
    body = {"dsl": config.name, "adapter": config.name, "text": "..."}
    if config.tenant:
        body["tenant"] = config.tenant
    key = ' -H "Authorization: Bearer $NL2DSL_API_KEY"' if config.api_key else ""
    return f"curl -X POST {url}/generate{key} -H 'Content-Type: application/json' -d '{json.dumps(body)}'"
