"""Named sets of evaluation runs and the markdown/JSON reports they write.

``adapters``: the shipped adapters on their held-out test sets (issue: tenant adapter beats the general one on
its tenant's flows and stays within 0.02 of it on general flows). Written to ``docs/TRAINING.md``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from service.demo_data.datasets import load_split
from service.evaluation.paired import paired
from service.evaluation.runner import RunConfig, Summary, format_rate, score
from service.evaluation.sections import carry_sections
from service.grammars import Grammar, GrammarRegistry, load_examples

__all__ = ["SUITES", "Case", "run_suite", "write_report"]


@dataclass(frozen=True)
class Case:
    """A configuration scored on a test set: ``data/<dsl>[/tenants/<tenant>]/test.jsonl`` or ``test_file``,
    first ``limit`` rows."""

    config: RunConfig
    test_set: str  # "flow", "sql", "flow/contoso", or the test file's name
    limit: int | None
    test_file: Path | None = None

    def rows(self, data_dir: Path):
        if self.test_file is not None:
            return load_examples(self.test_file)[: self.limit]
        dsl, _, tenant = self.test_set.partition("/")
        return load_split(data_dir, dsl, "test", tenant=tenant or None, limit=self.limit)


TENANTS = ("contoso", "fabrikam")  # tenants with a shipped adapter and test set
#: The issue's bar: flow-general's exact match; a tenant adapter's gain on its own test set over flow-general,
#: and the most it may lose to flow-general on general flows.
GENERAL_MIN, TENANT_GAIN_MIN, GENERAL_DROP_MAX = 0.8, 0.2, 0.02


def _adapters_suite(limit: int) -> list[Case]:
    half = max(1, limit // 2)
    cases = [
        Case(RunConfig("flow-general", "flow", adapter="flow-general"), "flow", limit),
        Case(RunConfig("sql-general", "sql", adapter="sql-general"), "sql", half),
    ]
    for tenant in TENANTS:
        cases += [
            Case(RunConfig(f"flow-general on {tenant}", "flow", tenant=tenant, adapter="flow-general"),
                 f"flow/{tenant}", half),
            Case(RunConfig(tenant, "flow", tenant=tenant, adapter=tenant), f"flow/{tenant}", half),
            Case(RunConfig(f"{tenant} on general flow", "flow", adapter=tenant), "flow", limit),
        ]
    return cases


def _matrix_suite(limit: int) -> list[Case]:
    """Base / base + examples / adapter / adapter + examples, each with and without the grammar constraint."""
    cases = []
    for test_set, dsl, tenant, adapter, max_tokens in [
        ("flow", "flow", None, "flow-general", 192),
        ("sql", "sql", None, "sql-general", 96),
        ("flow/contoso", "flow", "contoso", "contoso", 192),
        ("flow/fabrikam", "flow", "fabrikam", "fabrikam", 192),
    ]:
        for constrained in (True, False):
            for label, name, examples in [("base", "base", 0), ("base + 3 examples", "base", 3),
                                          (adapter, adapter, 0), (f"{adapter} + 3 examples", adapter, 3)]:
                config = RunConfig(label, dsl, tenant=tenant, adapter=name, examples=examples,
                                   constrained=constrained, max_tokens=max_tokens)
                cases.append(Case(config, test_set, limit))
    return cases


def _smoke_suite(limit: int) -> list[Case]:
    """The base model on flow and sql, constrained and not: a quick end-to-end check of the harness."""
    return [Case(RunConfig(f"base{'' if c else ' (free)'}", dsl, adapter="base", constrained=c, max_tokens=96),
                 dsl, limit) for dsl in ("flow", "sql") for c in (True, False)]


SUITES = {"adapters": _adapters_suite, "matrix": _matrix_suite, "smoke": _smoke_suite}
REPORTS = {"adapters": "TRAINING.md", "matrix": "EVALUATION.md", "smoke": "SMOKE.md"}

INTROS = {
    "matrix": """Every configuration a user chooses between, per DSL and tenant, scored through `POST /generate` on
the held-out test sets (flow: unseen trigger/action pairs; sql: unseen query shapes; tenants: flows with their
private connector): the base model alone, with 3 retrieved examples (BM25, the tenant's first; the test item is
never retrieved), the fine-tuned adapter, and the adapter with examples; each with the grammar constraint
(`constrained: true`, the default) and without it. Base prompts also list the catalog operations the request
mentions. Greedy decoding.

Columns: exact match of the whole program; string similarity (difflib ratio); tree similarity (1 - ordered tree
edit distance / tree size over the lark parse trees, 0 when unparseable: partial credit for a missing or
swapped action); valid = parses; non-parsed split by cause: "grammar" = finished by itself and does not parse,
"cut" = stopped by max_tokens; hallucination = operation names / parameter keys (flow) or tables / columns (sql)
that the catalog or schema lacks, per name or key used; refused = requests the tenant's safety policy answered
with 400 `safety_blocked` (no code: counted wrong); errors = requests that could not be measured; latency
p50/p95 per request at the given
concurrency on this 2-core CPU with the embedded 135M model.""",
    "adapters": """The shipped LoRA adapters, trained with `nl2dsl train` on the embedded base (SmolLM2-135M-Instruct,
CPU), scored through `POST /generate` on held-out test sets: flow's test set only has trigger/action pairs that
no training flow has, sql's only query shapes no training query has, and each tenant's test set only flows with
its private connector. Exact match is the whole program, character for character. Greedy decoding, grammar
constraint on (the tenant's grammar for tenant runs), no retrieved examples for adapters (their training prompt
had none). "grammar violations" = finished by themselves and still invalid (0 by construction); "cut" = stopped
by max_tokens.

How the adapters were trained (wall times in each `adapters/<name>/manifest.yaml`):

```sh
nl2dsl data                                   # data/: 20,000 train + 500 test pairs per DSL, 400 + 100 per tenant
nl2dsl train --dsl flow --name flow-general --steps 60               # stage 1 (then copied to /tmp/stage1)
nl2dsl train --dsl flow --name flow-general --init-from /tmp/stage1 --steps 90 --seed 1   # stage 2: 150 in all
nl2dsl train --dsl flow --name contoso --tenant contoso --tenants contoso \\
    --init-from adapters/flow-general --steps 80 --lr 3e-4 --replay 0.875  # 7 of each batch of 8: general flows
nl2dsl train --dsl flow --name fabrikam --tenant fabrikam --tenants fabrikam \\
    --init-from adapters/flow-general --steps 80 --lr 3e-4 --replay 0.875
nl2dsl train --dsl sql --name sql-general --steps 45
```

Batch 8, LoRA r=16 (alpha 32) on all attention and MLP projections (4.9M trainable parameters, 19 MB per adapter),
lr 1e-3 (3e-4 for tenants), float32 on 2 CPU cores: 9-12 s a step for flow, 6 s for sql when the machine is
otherwise idle (12-17 s for the tenants' 80 steps: 19 min for contoso, 23 for fabrikam). A tenant adapter continues
from flow-general and replays general flows in 7 of each 8 examples, so it keeps, and here even extends, the
general skill while it learns the tenant's connector: more general replay over more steps did what neither a
shorter run with less replay (40 steps, 3/4 replay: 0.83 on general flow) nor pulling that adapter back toward
flow-general did (`nl2dsl blend`, weight-space interpolation: keeping 0.7 or 0.5 of the tenant training's change
scored 0.84 / 0.86 on general flow but only 0.16 / 0.06 on contoso's own test set, against 0.50 unblended).""",
}


def run_suite(url: str, cases: list[Case], *, data_dir: Path, grammars_dir: Path, concurrency: int,
              api_key: str | None = None, grammar: Grammar | None = None) -> list[tuple[Case, Summary]]:
    """Score each case through the service; ``grammar``: the DSL of every case, when it is not a shipped one."""
    grammars = GrammarRegistry(grammars_dir).load() if grammar is None else None
    return [(case, score(url, case.config, case.rows(data_dir),
                         grammar or grammars.get(case.config.dsl, tenant=case.config.tenant),
                         concurrency=concurrency, api_key=api_key, where=case.test_set)) for case in cases]


_COLUMNS = [
    ("configuration", lambda c, s: c.config.label),
    ("constrained", lambda c, s: "yes" if c.config.constrained else "no"),
    ("n", lambda c, s: str(s.n)),
    ("exact match (95% interval)", lambda c, s: format_rate(s.exact_match, s.exact_match_ci)),
    ("canonical match", lambda c, s: format_rate(s.canonical_match, s.canonical_match_ci)),
    ("semantic match", lambda c, s: format_rate(s.semantic_match, s.semantic_match_ci)),
    ("string sim.", lambda c, s: f"{s.string_similarity:.3f}"),
    ("tree sim.", lambda c, s: f"{s.tree_similarity:.3f}"),
    ("valid", lambda c, s: f"{s.valid_rate:.3f}"),
    ("non-parsed: grammar", lambda c, s: f"{s.grammar_violation_rate:.3f}"),
    ("non-parsed: cut", lambda c, s: f"{s.cut_rate:.3f}"),
    ("API-name halluc.", lambda c, s: f"{s.name_hallucination_rate:.3f}"),
    ("param-key halluc.", lambda c, s: f"{s.key_hallucination_rate:.3f}"),
    ("refused", lambda c, s: f"{s.refusal_rate:.3f}"),
    ("errors", lambda c, s: f"{s.error_rate:.3f}"),
    ("p50 s", lambda c, s: f"{s.p50_s:.2f}"),
    ("p95 s", lambda c, s: f"{s.p95_s:.2f}"),
]


def bar_lines(results: list[tuple[Case, Summary]]) -> list[str]:
    """The issue's bar, checked on the adapters suite's results: flow-general's exact match and every finished
    output valid; each tenant adapter's gain on its own test set and its distance to flow-general on general
    flows (a tenant whose runs are missing is skipped)."""
    # The bar is for the service as served: under the grammar constraint (the matrix also runs without it).
    by_run = {(c.config.label, c.test_set): s for c, s in results if c.config.constrained}
    general = by_run.get(("flow-general", "flow"))
    if general is None:
        return []
    finished_valid = general.grammar_violation_rate == 0
    lines = ["## Against the bar", "",
             f"- flow-general on general flows: exact match {general.exact_match:.3f} (bar >= {GENERAL_MIN}: "
             f"{'met' if general.exact_match >= GENERAL_MIN else 'NOT met'}); outputs that finished by themselves and "
             f"did not parse: {general.grammar_violation_rate:.3f} ({'met' if finished_valid else 'NOT met'})."]
    for tenant in TENANTS:
        own, base_on_own = by_run.get((tenant, f"flow/{tenant}")), by_run.get((f"flow-general on {tenant}",
                                                                                f"flow/{tenant}"))
        on_general = by_run.get((f"{tenant} on general flow", "flow"))
        if not (own and base_on_own and on_general):
            continue
        gain, drop = own.exact_match - base_on_own.exact_match, general.exact_match - on_general.exact_match
        verdict = "met" if gain >= TENANT_GAIN_MIN and drop <= GENERAL_DROP_MAX else "NOT met"
        lines.append(f"- {tenant}: own test set {own.exact_match:.3f} vs flow-general {base_on_own.exact_match:.3f} "
                     f"(+{gain:.3f}, bar +{TENANT_GAIN_MIN}); general flows {on_general.exact_match:.3f} vs "
                     f"{general.exact_match:.3f} ({-drop:+.3f}, bar within {GENERAL_DROP_MAX}): {verdict}.")
    return lines + [""]


def paired_lines(results: list[tuple[Case, Summary]]) -> list[str]:
    """Each configuration against the first one, on the same pairs of one test set: the pairs each got right and
    the other did not by the strongest score the DSL declares, and the exact McNemar test
    (``service.evaluation.paired``)."""
    scored = [(case, s) for case, s in results if s.judged_hits]
    if len(scored) < 2:
        return []
    (first, reference), lines = scored[0], []
    for case, s in scored[1:]:
        if len(s.judged_hits) == len(reference.judged_hits):
            p = paired(s.judged_hits, reference.judged_hits)
            lines.append(f"- {case.config.label!r} against {first.config.label!r} ({s.judged_by} match): {p.wins} "
                         f"pairs won, {p.losses} lost, exact McNemar p = {p.p_value:.2g}")
    return ["Paired, on the same pairs:", "", *lines, ""] if lines else []


def write_report(results: list[tuple[Case, Summary]], *, title: str, command: str, markdown: Path,
                 intro: str = "") -> None:
    """One markdown table per test set, the bar where it applies, a PNG chart and the JSON."""
    lines = [f"# {title}", "", *([intro, ""] if intro else []), "Produced by:", "", f"```sh\n{command}\n```", ""]
    lines += bar_lines(results)
    test_sets = list(dict.fromkeys(case.test_set for case, _ in results))
    for test_set in test_sets:
        lines += [f"## Test set `{test_set}`", "", "| " + " | ".join(name for name, _ in _COLUMNS) + " |",
                  "|" + "---|" * len(_COLUMNS)]
        in_set = [(case, s) for case, s in results if case.test_set == test_set]
        lines += ["| " + " | ".join(cell(case, s) for _, cell in _COLUMNS) + " |" for case, s in in_set]
        lines += ["", *paired_lines(in_set)]
    chart = markdown.with_suffix(".png")
    lines += [f"![exact match and tree similarity per configuration]({chart.name})", ""]
    markdown.parent.mkdir(parents=True, exist_ok=True)
    old = markdown.read_text() if markdown.exists() else ""
    markdown.write_text(carry_sections(old, "\n".join(lines)))  # e.g. bench/training.py's section
    _plot(results, chart, title=title)
    payload = [
        {"case": {**asdict(case.config), "test_set": case.test_set}, "summary": asdict(s)} for case, s in results
    ]
    markdown.with_suffix(".json").write_text(json.dumps(payload, indent=1))


def _plot(results: list[tuple[Case, Summary]], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{c.test_set}: {c.config.label}{'' if c.config.constrained else ' (free)'}" for c, _ in results]
    exact = [s.exact_match for _, s in results]
    tree = [s.tree_similarity or 0.0 for _, s in results]
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(results) + 1.5))
    ys = range(len(results))
    ax.barh([y + 0.2 for y in ys], exact, height=0.4, label="exact match")
    ax.barh([y - 0.2 for y in ys], tree, height=0.4, label="tree similarity")
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
