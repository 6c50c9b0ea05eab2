"""``nl2dsl``: the service and its tools.

    serve     start the HTTP service                    prepare   convert the embedded model once
    grammar   check grammars; show one whole            keys      hash an API key for the keys file
    data      generate the demo datasets                train     fine-tune a LoRA adapter
    blend     pull a tenant adapter toward the general  eval      score test sets through the service
    onboard   grammar + pairs -> gated adapter, report
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import typing
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nl2dsl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the HTTP service")
    serve.add_argument("--host", default=None, help="default: NL2DSL_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default: NL2DSL_PORT or 8000")
    serve.add_argument("--model", default=None, help="model folder (default: NL2DSL_MODEL or the embedded model)")

    commands.add_parser("prepare", help="convert the embedded model once (progress on stderr)")

    grammar = commands.add_parser("grammar", help="grammar tools")
    grammar_commands = grammar.add_subparsers(dest="grammar_command", required=True)
    check = grammar_commands.add_parser("check", help="compile grammars with lark and the engine's llguidance")
    check.add_argument("paths", nargs="*", type=Path, help="*.lark files (default: every shipped grammar)")
    show = grammar_commands.add_parser("show", help="print a shipped DSL's whole grammar (its catalog's rules in)")
    show.add_argument("dsl")

    keys = commands.add_parser("keys", help="API key tools")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    hashing = keys_commands.add_parser("hash", help="print the sha256 of a key, as the keys file stores it")
    hashing.add_argument("key", nargs="?", help="the key (default: read one line from standard input)")

    data = commands.add_parser("data", help="generate the datasets in data/ (deterministic), or read NL2Bash")
    data.add_argument("--out", type=Path, default=None,
                      help="default: the project's data/ (with --nl2bash: onboarding/nl2bash/pairs.jsonl)")
    data.add_argument("--nl2bash", type=Path, default=None, metavar="DIR",
                      help="NL2Bash's data/bash folder (all.nl, all.cm): write its pairs as JSONL for onboarding")

    train = commands.add_parser("train", help="fine-tune a LoRA adapter on the served base model")
    train.add_argument("--dsl", required=True)
    train.add_argument("--name", required=True, help="adapter name (and folder under --out-dir)")
    train.add_argument("--out-dir", type=Path, default=None, help="default: NL2DSL_ADAPTERS_DIR (adapters/)")
    train.add_argument("--tenant", default=None, help="train on this tenant's data and grammar")
    train.add_argument("--tenants", default="*", help="comma-separated tenants the adapter serves ('*' = all)")
    train.add_argument("--init-from", type=Path, default=None, help="continue from this adapter (tenant on general)")
    train.add_argument("--replay", type=float, default=0.5, help="share of each batch from general data (--tenant)")
    train.add_argument("--steps", type=int, default=60)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--rank", type=int, default=16)
    train.add_argument("--examples", type=int, default=0, help="few-shot examples in the prompt")
    train.add_argument("--train-limit", type=int, default=None, help="use only the first N training rows")
    train.add_argument("--eval-every", type=int, default=15)
    train.add_argument("--seed", type=int, default=0)

    blend = commands.add_parser("blend", help="pull a tenant adapter part of the way back to the general one")
    blend.add_argument("--tuned", type=Path, required=True, help="the tenant adapter (trained --init-from GENERAL)")
    blend.add_argument("--general", type=Path, required=True, help="the adapter it was trained from")
    blend.add_argument("--keep", type=float, required=True, help="share of the tenant training's change kept (0-1)")
    blend.add_argument("--out", type=Path, required=True, help="the blended adapter's folder (its name)")

    evaluate = commands.add_parser("eval", help="score test sets through the service over HTTP")
    evaluate.add_argument("--suite", default="matrix", choices=["matrix", "adapters", "smoke", "safety"],
                          help="matrix: every configuration -> docs/EVALUATION.md; adapters -> docs/TRAINING.md")
    evaluate.add_argument("--url", default=None, help="a running service; default: start one on the embedded model")
    evaluate.add_argument("--limit", type=int, default=None,
                          help="test rows per case (default: matrix 40, adapters 200; adapters' tenant sets use half)")
    evaluate.add_argument("--concurrency", type=int, default=8)
    evaluate.add_argument("--api-key", default=None, help="API key for --url (an admin's, to run as each tenant)")
    evaluate.add_argument("--out", type=Path, default=None, help="report path (default: docs/<SUITE>.md)")
    evaluate.add_argument("--dsl", default=None, help="score this DSL (any the service serves) instead of a suite")
    evaluate.add_argument("--test", type=Path, default=None, help="with --dsl: a JSONL file of text/code pairs")
    evaluate.add_argument("--adapter", default=None, help="with --dsl: the adapter ('base': none)")
    evaluate.add_argument("--examples", type=example_counts, default=None,
                          help="with --dsl: retrieved examples per prompt; several (0,3): each scored on the same "
                               "pairs, and each against the first with a paired test")
    evaluate.add_argument("--tenant", default=None, help="with --dsl: send the requests for this tenant (admin key)")

    onboard = commands.add_parser("onboard", help="grammar + pairs -> checked dataset, gated adapter, report")
    onboard.add_argument("--grammar", type=Path, required=True, help="the DSL's Lark grammar, as written")
    onboard.add_argument("--pairs", type=Path, required=True, help='JSONL of {"text", "code", "context"?}')
    onboard.add_argument("--name", default=None, help="the DSL's and the adapter's name (default: the grammar's)")
    onboard.add_argument("--url", default=None, help="a running service (default: start one on the embedded model)")
    onboard.add_argument("--api-key", default=None, help="API key for --url (default: NL2DSL_API_KEY)")
    _option_flags(onboard)
    onboard.add_argument("--batch-size", type=int, default=8)
    onboard.add_argument("--work-dir", type=Path, default=None, help="default: ./onboarding/<name>")
    onboard.add_argument("--heldout-file", type=Path, default=None,
                         help="your own held-out pairs (JSONL) instead of a split of --pairs")
    onboard.add_argument("--status", type=Path, default=None, help="keep the run's progress in this JSON file")
    onboard.add_argument("--options", type=Path, default=None,
                         help="the run's options as JSON (service/onboarding/options.py) instead of their flags")

    args = parser.parse_args(argv)
    # Nothing is fetched from a model hub, ever.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    handlers = {"serve": _serve, "prepare": _prepare, "grammar": _grammar_check, "keys": _keys_hash, "data": _data,
                "train": _train, "blend": _blend, "eval": _eval, "onboard": _onboard}
    return handlers[args.command](args)


def example_counts(value: str) -> list[int]:
    """``--examples``: one count or several, comma-separated, at most 8, each from 0 to what a request may ask
    (``max_examples``, service.config)."""
    from service.config import Settings

    most = Settings.model_fields["max_examples"].default
    try:
        counts = [int(part) for part in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value[:40]!r}: whole numbers, comma-separated (0,3)") from None
    if not 1 <= len(counts) <= 8 or not all(0 <= count <= most for count in counts):
        raise argparse.ArgumentTypeError(f"{value[:40]!r}: 1 to 8 counts, each from 0 to {most}")
    return counts


def _serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from service.app import create_app
    from service.config import Settings

    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "model": args.model}.items() if v}
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # SIGTERM: stop accepting, let in-flight generations finish (up to drain_timeout_s), then stop the engine.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                timeout_graceful_shutdown=settings.drain_timeout_s)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from service.config import Settings
    from service.model import resolve_model

    settings = Settings()
    print(resolve_model(settings.model, settings.cache_dir))
    return 0


def _keys_hash(args: argparse.Namespace) -> int:
    from service.security import hash_key

    key = args.key if args.key is not None else sys.stdin.readline().strip()
    if not key:
        print("no key given", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def _data(args: argparse.Namespace) -> int:
    from service.config import Settings
    from service.demo_data.datasets import build
    from service.grammars import GrammarRegistry

    if args.nl2bash is not None:
        from service.demo_data.nl2bash import write_pairs

        out = args.out or Path("onboarding") / "nl2bash" / "pairs.jsonl"
        try:
            written, left_out = write_pairs(args.nl2bash, out)
        except ValueError as exc:
            raise SystemExit(f"nl2dsl data: {exc}") from None
        print(f"{written:>6} pairs  {out} ({left_out} lines left out: empty or over-long)")
        return 0
    settings = Settings()
    out = args.out or settings.data_dir
    for name, rows in build(out, GrammarRegistry(settings.grammars_dir).load()).items():
        print(f"{rows:>6} rows  {out / name}.jsonl")
    return 0


def _blend(args: argparse.Namespace) -> int:
    from service.training.blend import blend

    print(blend(args.tuned, args.general, args.out, keep=args.keep))
    return 0


def _train(args: argparse.Namespace) -> int:
    from service.config import Settings
    from service.demo_data.datasets import load_split
    from service.grammars import GrammarRegistry, examples_path
    from service.model import resolve_model
    from service.training.trainer import TrainConfig, train

    settings = Settings()
    data_dir = settings.data_dir
    grammar = GrammarRegistry(settings.grammars_dir).load().get(args.dsl, tenant=args.tenant)
    rows = load_split(data_dir, args.dsl, "train", tenant=args.tenant)
    files = [examples_path(data_dir, args.dsl, "train", tenant=args.tenant)]
    # The last rows of the training file are held out for the check during training (the test split stays unseen).
    heldout, rows = rows[-64:], rows[:-64][: args.train_limit]
    replay: list = []
    if args.tenant:
        replay = load_split(data_dir, args.dsl, "train")[:5000]
        files.append(examples_path(data_dir, args.dsl, "train"))
    config = TrainConfig(
        name=args.name, dsl=args.dsl, output=(args.out_dir or settings.adapters_dir) / args.name,
        tenants=[t.strip() for t in args.tenants.split(",")], steps=args.steps, batch_size=args.batch_size,
        learning_rate=args.lr, rank=args.rank, alpha=2 * args.rank, init_from=args.init_from,
        replay_fraction=args.replay if args.tenant else 0.0, examples=args.examples, eval_every=args.eval_every,
        seed=args.seed,
    )
    model = resolve_model(settings.model, settings.cache_dir)
    result = train(config, model_path=model, grammar=grammar, train_rows=rows, heldout_rows=heldout,
                   replay_rows=replay, data_files=files)
    print(f"wrote {result.output} in {result.wall_time_s:.0f} s: loss {result.first_loss:.3f} -> "
          f"{result.last_loss:.3f}, held-out exact match {result.heldout_exact_match}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import contextlib
    import tempfile

    from service.config import PROJECT_ROOT, Settings
    from service.evaluation.runner import RunConfig
    from service.evaluation.suites import INTROS, REPORTS, SUITES, Case, run_suite, write_report
    from service.local_server import local_server

    settings = Settings()
    if args.suite == "safety":  # offline: the request checks on the red-team set, no service needed
        from service.evaluation.safety import write_safety_report

        out = args.out or PROJECT_ROOT / "docs" / "SAFETY.md"
        print(write_safety_report(PROJECT_ROOT / "tests" / "safety" / "redteam.jsonl", settings.data_dir, out,
                                  command="nl2dsl eval --suite safety"))
        return 0
    grammar = None
    if args.dsl:  # any DSL and test file, scored as given
        if args.test is None:
            raise SystemExit("--dsl needs --test FILE.jsonl")
        label = args.adapter or "default"
        cases = [Case(RunConfig(label if count is None else f"{label}, {count} examples", args.dsl,
                                tenant=args.tenant, adapter=args.adapter, examples=count),
                      args.test.name, args.limit, test_file=args.test) for count in args.examples or [None]]
        out = args.out or Path(f"eval-{args.dsl}.md")
        command = _reproducible("eval")
    else:
        limit = args.limit or {"matrix": 40, "adapters": 200, "smoke": 5}[args.suite]
        cases = SUITES[args.suite](limit)
        out = args.out or PROJECT_ROOT / "docs" / REPORTS[args.suite]
        command = f"nl2dsl eval --suite {args.suite} --limit {limit} --concurrency {args.concurrency}"
    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            log = Path(tempfile.mkdtemp(prefix="nl2dsl-eval-")) / "server.log"
            print(f"starting the service (log: {log})", file=sys.stderr)
            # Quality, not latency under a deadline: a loaded CPU can take minutes per request at high concurrency.
            url = stack.enter_context(local_server(log=log, env={"NL2DSL_REQUEST_TIMEOUT_S": "3600"}))
        if args.dsl and args.dsl not in {p.stem for p in settings.grammars_dir.glob("*.lark")}:
            grammar = _served_grammar(url, args.dsl, api_key=args.api_key)
        results = run_suite(url, cases, data_dir=settings.data_dir, grammars_dir=settings.grammars_dir,
                            concurrency=args.concurrency, api_key=args.api_key, grammar=grammar)
    title = f"Evaluation: {args.dsl} on {args.test.name}" if args.dsl else f"Evaluation: {args.suite}"
    intro = "" if args.dsl else INTROS.get(args.suite, "")
    write_report(results, title=title, command=command, markdown=out, intro=intro)
    print(f"wrote {out}")
    return 0


def _served_grammar(url: str, dsl: str, *, api_key: str | None):
    """The grammar of a DSL the service serves (an upload), compiled here to score tree similarity."""
    from nl2dsl_client import NL2DSLClient

    from service.grammars import compile_grammar

    with NL2DSLClient(url, api_key=api_key) as client:
        info = client.dsl(dsl)
    return compile_grammar(dsl, info.grammar, start=info.start, origin="upload")


def _onboard(args: argparse.Namespace) -> int:
    from nl2dsl_client import APIError
    from pydantic import ValidationError

    from service.config import Settings
    from service.errors import NL2DSLError
    from service.onboarding import OnboardConfig, onboard
    from service.onboarding.options import OnboardOptions

    if args.options is not None:  # as data: what the API's run was asked for, never flags
        options = OnboardOptions.model_validate_json(args.options.read_bytes())
    else:
        try:
            flags = {name: getattr(args, name) for name in OnboardOptions.model_fields if hasattr(args, name)}
            options = OnboardOptions(**flags, compare=_comparison_beside(args.grammar))
        except (ValidationError, ValueError) as exc:
            raise SystemExit(f"nl2dsl onboard: {exc}") from None
    name = args.name or args.grammar.stem
    config = OnboardConfig(
        grammar=args.grammar, pairs=args.pairs, name=name, work_dir=args.work_dir or Path("onboarding") / name,
        url=args.url, api_key=args.api_key or Settings().api_key, **dict(options),
        batch_size=args.batch_size, command=_reproducible("onboard"), status_file=args.status,
        heldout_file=args.heldout_file,
    )
    try:
        report = onboard(config)
    except (NL2DSLError, APIError) as exc:
        print(f"onboarding stopped: {exc.message}", file=sys.stderr)
        for item in (exc.detail if isinstance(exc.detail, list) else [])[:20]:
            print(f"  {item}", file=sys.stderr)
        return 2
    return 0 if report.published else 1


def _comparison_beside(grammar: Path):  # noqa: ANN202 - a Comparison, imported late
    """The ``compare`` declaration of the YAML beside a grammar (``cron.lark`` -> ``cron.yaml``), as shipped DSLs
    have it; None without one."""
    from service import safe_yaml
    from service.grammars import Comparison

    beside = grammar.with_suffix(".yaml")
    if not beside.is_file():
        return None
    meta = safe_yaml.load(beside.read_text(encoding="utf-8")) or {}
    return Comparison.model_validate(meta.get("compare") or {}) if isinstance(meta, dict) else None


def _option_flags(parser: argparse.ArgumentParser) -> None:
    """``nl2dsl onboard``'s flags for the run's options, made from the one model of them (their defaults, bounds
    and help): ``--budget`` (``30m``, ``1h``, ``900``: seconds), ``--heldout``, ``--max-tokens``, ... The DSL's
    ``compare`` declaration is no flag: it is read from the YAML beside the grammar."""
    from service.onboarding.options import OnboardOptions, budget_seconds

    for name, field in OnboardOptions.model_fields.items():
        if name == "compare":
            continue
        kind = next(t for t in (*typing.get_args(field.annotation), field.annotation) if t in (str, int, float))
        if name == "budget_s":
            parser.add_argument("--budget", dest=name, type=budget_seconds, default=field.default,
                                help=f"{field.description} 30m, 1h, 900s (default: {field.default:g} s)")
        else:
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=field.default,
                                help=f"{field.description} (default: {field.default})")


def _reproducible(subcommand: str) -> str:
    """This run's command line as reports print it ("Produced by"), with any ``--api-key`` value replaced by
    ``$NL2DSL_API_KEY``: a report is published into the store, where the DSL's other readers find it."""
    words, hidden = [], False
    for word in sys.argv[2:]:
        if hidden:
            word, hidden = "$NL2DSL_API_KEY", False
        elif word == "--api-key":
            hidden = True
        elif word.startswith("--api-key="):
            word = "--api-key=$NL2DSL_API_KEY"
        words.append(word)
    return shlex.join(["nl2dsl", subcommand, *words]).replace("'$NL2DSL_API_KEY'", '"$NL2DSL_API_KEY"')


def _grammar_check(args: argparse.Namespace) -> int:
    from service.config import Settings
    from service.errors import GrammarInvalid
    from service.grammars import GrammarRegistry, load_grammar_file

    if args.grammar_command == "show":  # e.g. to onboard a shipped DSL as a team would its own
        print(GrammarRegistry(Settings().grammars_dir).load().get(args.dsl).text)
        return 0
    paths = args.paths or sorted(Settings().grammars_dir.glob("*.lark"))
    failed = 0
    for path in paths:
        try:
            grammar = load_grammar_file(path)
        except GrammarInvalid as exc:
            failed += 1
            print(f"FAIL {exc.message}", file=sys.stderr)
            continue
        bad = [ex.text for ex in grammar.examples if not grammar.parse(ex.code).valid]
        status = "ok" if not bad else f"{len(bad)} example(s) do not parse: {bad[:3]}"
        failed += bool(bad)
        print(f"{'ok  ' if not bad else 'FAIL'} {path} ({grammar.name}): {status}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
