"""Run a load profile and write the report: ``python -m loadtest.run --profile steady [--url URL]``.

Without ``--url`` it starts the embedded service (``max_loras`` 2, so the adapter-churn users force swaps)
and stops it afterwards. Writes Locust's HTML report and CSVs plus ``summary.md`` (users, requests/s,
p50/p95 per request name, failures, the gate's verdict) to ``--out`` and exits 1 on a breach.
``--from-run DIR`` judges a finished run (its ``locust_final.json``) against ``--thresholds`` again, e.g. the
production gate, without running Locust.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from loadtest.gate import Row, check, load_thresholds, read_rows
from service.local_server import local_server

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__.splitlines()[0])
    profiles = yaml.safe_load((HERE / "profiles.yaml").read_text())
    parser.add_argument("--profile", default="steady", choices=sorted(profiles))
    parser.add_argument("--url", default=None, help="a running service (default: start the embedded one)")
    parser.add_argument("--thresholds", type=Path, default=HERE / "thresholds.yaml")
    parser.add_argument("--api-key", default=None, help="API key for --url (an admin's: the users act as tenants)")
    parser.add_argument("--out", type=Path, default=None, help="default: reports/loadtest-<profile>-<time>/")
    parser.add_argument("--from-run", type=Path, default=None,
                        help="a finished run's folder: write its summary against --thresholds, run nothing")
    args = parser.parse_args(argv)
    if args.from_run:
        return _judge(args.profile, profiles[args.profile], "(a finished run)", args.from_run, args.thresholds, 0)
    out = args.out or ROOT / "reports" / f"loadtest-{args.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    profile = profiles[args.profile]

    with _service(args.url, out) as url:
        print(f"load profile {args.profile!r} against {url}; report in {out}", flush=True)
        env = {**os.environ, **({"NL2DSL_LOADTEST_API_KEY": args.api_key} if args.api_key else {})}
        code = subprocess.call(_locust_command(profile, url, args.thresholds, out), cwd=ROOT, env=env)
    return _judge(args.profile, profile, url, out, args.thresholds, code)


def _judge(name: str, profile: dict, url: str, out: Path, thresholds: Path, locust_code: int) -> int:
    """Gate the run's statistics, write ``summary.md``; 1 on a breach (or when Locust itself failed)."""
    final = out / "locust_final.json"
    rows = read_rows(final) if final.exists() else []  # Locust died before writing them: nothing is proven
    breaches = check(rows, load_thresholds(thresholds))
    summary = _summary(name, profile, url, rows, breaches, thresholds)
    (out / "summary.md").write_text(summary)
    print(summary)
    return 1 if breaches or locust_code != 0 else 0


@contextlib.contextmanager
def _service(url: str | None, out: Path):
    if url:
        yield url
        return
    print("starting the embedded service (30-60 s on CPU) ...", flush=True)
    with local_server(env={"NL2DSL_MAX_LORAS": "2"}, log=out / "server.log") as started:
        yield started


def _locust_command(profile: dict, url: str, thresholds: Path, out: Path) -> list[str]:
    locustfiles = str(HERE / "locustfile.py")
    if "shape" in profile:
        locustfiles += "," + str(HERE / profile["shape"])
    command = [sys.executable, "-m", "locust", "-f", locustfiles, "--headless", "--host", url,
               "--csv", str(out / "locust"), "--html", str(out / "report.html"), "--thresholds", str(thresholds),
               "--only-summary", "--stop-timeout", "120"]
    if "shape" not in profile:
        command += ["--users", str(profile["users"]), "--spawn-rate", str(profile["spawn_rate"]),
                    "--run-time", profile["run_time"]]
    if profile.get("one_each"):
        command.append("--one-each")
    if "max_tokens" in profile:
        command += ["--max-tokens", str(profile["max_tokens"])]
    return command + list(profile.get("user_classes", []))


def _summary(name: str, profile: dict, url: str, rows: list[Row], breaches, thresholds: Path) -> str:
    load = f"shape `{profile['shape']}`" if "shape" in profile else (
        f"{profile['users']} users, {profile['run_time']}")
    gate = thresholds.relative_to(ROOT) if thresholds.is_relative_to(ROOT) else thresholds
    lines = [
        f"# Load test `{name}`: {'PASS' if not breaches else 'FAIL'}",
        "",
        f"Against {url}, {load}, gate `{gate}`.",
        "",
        "| request | requests | failures | requests/s | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row.name} | {row.requests} | {row.failures} | {row.rps:.2f} | {row.p50_ms:.0f} | "
                     f"{row.p95_ms:.0f} |")
    lines += ["", "Breaches: " + ("; ".join(map(str, breaches)) if breaches else "none"), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
