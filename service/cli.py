"""``nl2dsl``: serve the API, prepare the embedded model, check grammars."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nl2dsl", description=__doc__)
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

    args = parser.parse_args(argv)
    # Nothing is fetched from a model hub, ever.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return {"serve": _serve, "prepare": _prepare, "grammar": _grammar_check}[args.command](args)


def _serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from service.app import create_app
    from service.config import Settings

    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "model": args.model}.items() if v}
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from service.config import Settings
    from service.model import resolve_model

    settings = Settings()
    print(resolve_model(settings.model, settings.cache_dir))
    return 0


def _grammar_check(args: argparse.Namespace) -> int:
    from service.config import Settings
    from service.errors import GrammarInvalid
    from service.grammars import load_grammar_file

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
