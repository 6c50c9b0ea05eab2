"""DSL registry: load the Lark grammars in ``grammars/``, compile them, and parse generated code.

A DSL is ``grammars/<name>.lark`` plus ``grammars/<name>.yaml`` (description, start rule, examples file and,
for catalog DSLs such as ``flow``, the catalog compiled into the grammar by :mod:`service.catalog`).
Every grammar is checked by both parsers that will read it: ``lark`` (validation of outputs) and the
engine's ``llguidance`` (constrained decoding); the two dialects differ only in bounded repetition,
translated once by :func:`to_engine_dialect`.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lark
import yaml

from service import metrics
from service.catalog import Catalog
from service.errors import GrammarInvalid, UnknownDSL

if TYPE_CHECKING:
    from service.safety import Policy, SafetyChecker

__all__ = ["Example", "Grammar", "GrammarRegistry", "ParseError", "ParseResult", "compile_grammar", "to_engine_dialect"]


@dataclass(frozen=True)
class Example:
    """One NL -> DSL pair (``context`` is e.g. the table schema for sql)."""

    text: str
    code: str
    context: str | None = None


@dataclass(frozen=True)
class ParseError:
    """Where and why code does not parse (1-based line and column)."""

    message: str
    line: int | None = None
    column: int | None = None
    expected: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ParseResult:
    valid: bool
    tree: lark.Tree | None = None
    error: ParseError | None = None


@dataclass(frozen=True, eq=False)
class Grammar:
    """A compiled DSL: the lark text, the grammar the engine decodes with, and a parser.

    ``engine_text`` is ``text`` in the engine's dialect, narrowed to the tenant's safety policy where it has
    one: output is parsed with the full grammar, so an unconstrained output that breaks the policy parses and
    is refused by name by the safety check, while constrained decoding cannot produce it at all.
    """

    name: str
    description: str
    text: str
    engine_text: str
    parser: lark.Lark
    examples: tuple[Example, ...] = ()
    catalog: Catalog | None = None
    #: The tenant whose private connectors this grammar includes (None: the shared grammar).
    tenant: str | None = None
    #: The .lark text before catalog rules were added (to compile tenant variants).
    structure: str = ""
    start: str = "start"
    #: "shipped" (grammars/), "tenant" (a tenant's variant) or "upload" (POST /dsls, named by its owner).
    origin: str = "shipped"

    @property
    def metric_label(self) -> str:
        """The ``dsl`` label in metrics: uploaded grammars, named by their owners, count as "custom"."""
        return "custom" if self.origin == "upload" else self.name

    def for_tenant(self, tenant: str, extra: Catalog, *, source: str, policy: Policy | None = None) -> Grammar:
        """This grammar with a tenant's private connectors added to its catalog, decoding narrowed to ``policy``."""
        catalog = self.catalog.merged(extra) if self.catalog else extra
        return compile_grammar(
            self.name,
            _with_catalog(self.structure, catalog),
            decoding_text=_with_catalog(self.structure, catalog, policy) if policy else None,
            source=source,
            start=self.start,
            description=self.description,
            examples=self.examples,
            catalog=catalog,
            tenant=tenant,
            structure=self.structure,
        )

    def parse(self, code: str) -> ParseResult:
        """Parse ``code``; never raises for bad code, returns the error position instead."""
        try:
            return ParseResult(valid=True, tree=self.parser.parse(code))
        except lark.UnexpectedInput as exc:
            return ParseResult(valid=False, error=_parse_error(exc, code, self._describe_terminal))

    def _describe_terminal(self, name: str) -> str:
        """A person's name for a terminal: the literal for anonymous strings (`"then "`), else its name."""
        try:
            pattern = self.parser.get_terminal(name).pattern
        except KeyError:
            return name
        if isinstance(pattern, lark.lexer.PatternStr) or name.startswith("__ANON"):
            return json.dumps(pattern.value) if isinstance(pattern, lark.lexer.PatternStr) else f"/{pattern.value}/"
        return name


# `item ~ 2..4` (lark) is `item{2,4}` for llguidance 1.7 (ENVIRONMENT.md); `item ~ 3` is `item{3}`.
# Strings and regex literals are skipped so a `~` inside them is left alone.
_LITERAL = r'"(?:[^"\\\n]|\\.)*"i?|/(?:[^/\\\n]|\\.)+/[imslux]*'
_TILDE = re.compile(rf"({_LITERAL})|~\s*(\d+)(?:\s*\.\.\s*(\d+))?")


def to_engine_dialect(text: str) -> str:
    """Translate lark's bounded repetition to the ``{n,m}`` form that the engine's llguidance reads."""

    def _replace(m: re.Match[str]) -> str:
        if m.group(1):
            return m.group(1)
        low, high = m.group(2), m.group(3)
        return f"{{{low},{high}}}" if high else f"{{{low}}}"

    return _TILDE.sub(_replace, text)


def compile_grammar(
    name: str,
    text: str,
    *,
    source: str = "<grammar>",
    start: str = "start",
    description: str = "",
    examples: tuple[Example, ...] = (),
    catalog: Catalog | None = None,
    tenant: str | None = None,
    structure: str | None = None,
    origin: str | None = None,
    decoding_text: str | None = None,
) -> Grammar:
    """Compile ``text`` with lark and check it with llguidance; raise GrammarInvalid saying where it fails.

    ``origin``: "shipped", "tenant" or "upload" (default: "tenant" for tenant variants, else "shipped").
    ``decoding_text``: the grammar for constrained decoding when it is narrower than ``text`` (a policy).
    """
    origin = origin or ("tenant" if tenant else "shipped")
    started = time.perf_counter()
    try:
        return _compile(name, text, source=source, start=start, description=description, examples=examples,
                        catalog=catalog, tenant=tenant, structure=structure, origin=origin,
                        decoding_text=decoding_text or text)
    finally:
        elapsed = time.perf_counter() - started
        metrics.GRAMMAR_COMPILE.labels(origin).observe(elapsed)


def _compile(
    name: str,
    text: str,
    *,
    source: str,
    start: str,
    description: str,
    examples: tuple[Example, ...],
    catalog: Catalog | None,
    tenant: str | None,
    structure: str | None,
    origin: str,
    decoding_text: str,
) -> Grammar:
    unbounded = unbounded_constructs(text)
    if unbounded:
        line, what = unbounded[0]
        raise GrammarInvalid(
            f"{source}:{line}: {what}; bound every repetition (e.g. /[a-z]{{1,32}}/ or item ~ 0..4) and spell "
            "whitespace out, so generation cannot run to max_tokens",
            detail={"source": source, "line": line, "parser": "nl2dsl", "problems": [w for _, w in unbounded]},
        )
    try:
        parser = lark.Lark(text, start=start, parser="earley", lexer="dynamic")
    except lark.exceptions.LarkError as exc:
        raise GrammarInvalid(
            f"{source}: lark cannot compile the grammar: {exc}".strip(),
            detail={"source": source, "line": _lark_error_line(exc, text), "column": _column(exc), "parser": "lark"},
        ) from exc
    engine_text = to_engine_dialect(decoding_text)
    error = _llguidance_error(engine_text)
    if error:
        raise GrammarInvalid(
            f"{source}: the engine's grammar parser (llguidance) rejects the grammar: {error}",
            detail={"source": source, "line": _first_line_number(error), "parser": "llguidance"},
        )
    return Grammar(
        name=name,
        description=description,
        text=text,
        engine_text=engine_text,
        parser=parser,
        examples=examples,
        catalog=catalog,
        tenant=tenant,
        structure=text if structure is None else structure,
        start=start,
        origin=origin,
    )


def unbounded_constructs(text: str) -> list[tuple[int, str]]:
    """Lines of ``text`` with an unbounded repetition (``*``, ``+``, ``{n,}``) or ``%ignore``.

    A weak model under an unbounded grammar can run an identifier or a list until max_tokens (DESIGN.md).
    """
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("%ignore"):
            found.append((number, "%ignore lets whitespace repeat without bound"))
            continue
        for m in re.finditer(_LITERAL + r"|//.*$|[*+]", line):
            token = m.group(0)
            if token.startswith("//"):
                break
            if token in ("*", "+"):
                found.append((number, f"unbounded '{token}' in a rule"))
            elif token.startswith("/"):
                body = re.sub(r"\\.|\[(?:\\.|[^\]])*\]", "", token[1:token.rindex("/")])
                if re.search(r"[*+]|\{\d+,\}", body):
                    found.append((number, f"unbounded repetition in regex {token}"))
    return found


class GrammarRegistry:
    """The DSLs the service knows, loaded from a directory at start-up (``load``) and looked up per request."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._grammars: dict[str, Grammar] = {}
        self._tenant_grammars: dict[tuple[str, str], Grammar] = {}
        #: Uploaded at run time (POST /dsls), by owner: a tenant, or None for shared ones (admin uploads).
        self._uploaded: dict[tuple[str | None, str], Grammar] = {}

    def load(self, policies: SafetyChecker | None = None) -> GrammarRegistry:
        """Compile every ``*.lark`` in the directory, then each tenant's variant from ``tenants/*.yaml``.

        With ``policies`` (enabled), every grammar's decoding is narrowed to its tenant's policy (the shared
        ones to the default policy), so constrained output cannot break it. The first grammar that fails stops start-up.
        """
        def policy(tenant: str | None) -> Policy | None:
            return policies.policy(tenant) if policies is not None and policies.enabled else None

        for path in sorted(self.directory.glob("*.lark")):
            grammar = load_grammar_file(path, policy=policy(None))
            self._grammars[grammar.name] = grammar
        for path in sorted((self.directory / "tenants").glob("*.yaml")):
            meta = yaml.safe_load(path.read_text()) or {}
            tenant, dsl = str(meta["tenant"]), str(meta["dsl"])
            base = self.get(dsl)
            types = base.catalog.types if base.catalog else {}
            extra = Catalog.from_dict({"types": types, **meta.get("catalog", {})}, source=str(path))
            self._tenant_grammars[(tenant, dsl)] = base.for_tenant(tenant, extra, source=str(path),
                                                                   policy=policy(tenant))
        return self

    def get(self, name: str, *, tenant: str | None = None) -> Grammar:
        """The DSL's grammar; with ``tenant``, the tenant's variant (its private connectors) if it has one.

        Uploaded grammars are found by their owner (the tenant) and, for shared uploads, by everyone.
        """
        for key in ((tenant, name), (None, name)):
            if key in self._uploaded and (key[0] is None or tenant is not None):
                return self._uploaded[key]
        if tenant is not None and (tenant, name) in self._tenant_grammars:
            return self._tenant_grammars[(tenant, name)]
        try:
            return self._grammars[name]
        except KeyError:
            raise UnknownDSL(
                f"unknown dsl {name!r}", detail={"available": sorted(self._grammars)}
            ) from None

    def tenants(self, name: str) -> list[str]:
        """Tenants with a private variant of DSL ``name``."""
        return sorted(t for t, dsl in self._tenant_grammars if dsl == name)

    def names(self) -> list[str]:
        """The shipped DSLs."""
        return sorted(self._grammars)

    def uploaded(self, owner: str | None) -> list[Grammar]:
        """Grammars uploaded by ``owner`` (a tenant; None: the shared ones)."""
        return [g for (o, _), g in sorted(self._uploaded.items(), key=lambda kv: kv[0][1]) if o == owner]

    def add_upload(self, grammar: Grammar, *, owner: str | None) -> None:
        self._uploaded[(owner, grammar.name)] = grammar

    def remove_upload(self, name: str, *, owner: str | None) -> None:
        if self._uploaded.pop((owner, name), None) is None:
            raise UnknownDSL(f"no uploaded dsl {name!r} of yours", detail={"name": name})

    def __iter__(self):
        return iter(self._grammars[name] for name in self.names())

    def __len__(self) -> int:
        return len(self._grammars)


def load_grammar_file(path: Path, *, policy: Policy | None = None) -> Grammar:
    """Load ``<dsl>.lark`` with its ``<dsl>.yaml`` (optional) and compile it, decoding narrowed to ``policy``."""
    meta: dict[str, Any] = {}
    meta_path = path.with_suffix(".yaml")
    if meta_path.exists():
        meta = yaml.safe_load(meta_path.read_text()) or {}
    name = meta.get("name", path.stem)
    catalog = Catalog.from_dict(meta["catalog"], source=str(meta_path)) if meta.get("catalog") else None
    structure = path.read_text()
    text = _with_catalog(structure, catalog)
    examples: tuple[Example, ...] = ()
    if meta.get("examples"):
        examples = tuple(load_examples(path.parent / meta["examples"]))
    return compile_grammar(
        name,
        text,
        source=str(path),
        start=meta.get("start", "start"),
        description=meta.get("description", ""),
        examples=examples,
        catalog=catalog,
        structure=structure,
        decoding_text=_with_catalog(structure, catalog, policy) if policy else None,
    )


def _with_catalog(structure: str, catalog: Catalog | None, policy: Policy | None = None) -> str:
    """The grammar text: the structure, the catalog's rules (less denied operations), narrowed to ``policy``."""
    if catalog is not None:
        if policy is not None:
            catalog = catalog.without(policy.denied_operations)
        structure = structure.rstrip("\n") + "\n\n" + catalog.grammar_rules()
    return policy.narrow(structure) if policy is not None else structure


def load_examples(path: Path) -> list[Example]:
    """Read a JSONL file of ``{"text", "code", "context"?}`` rows."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Example(text=r["text"], code=r["code"], context=r.get("context")) for r in rows]


def _parse_error(exc: lark.UnexpectedInput, code: str, describe) -> ParseError:
    expected: set[str] = set()
    if isinstance(exc, lark.UnexpectedCharacters):
        expected = set(exc.allowed or ())
        at = exc.pos_in_stream
        message = f"unexpected character {code[at]!r}" if at < len(code) else "unexpected input"
    elif isinstance(exc, lark.UnexpectedEOF):
        expected = set(exc.expected or ())
        message = "unexpected end of code"
    elif isinstance(exc, lark.UnexpectedToken):
        expected = set(exc.expected or ())
        message = f"unexpected {exc.token!r}"
    else:  # pragma: no cover - lark has no other UnexpectedInput subclasses today
        message = str(exc)
    line, column = getattr(exc, "line", None), getattr(exc, "column", None)
    if line in (None, -1):  # lark reports EOF without a position: point just past the last character
        lines = code.split("\n")
        line, column = len(lines), len(lines[-1]) + 1
    return ParseError(message=message, line=line, column=column, expected=sorted({describe(e) for e in expected}))


def _lark_error_line(exc: Exception, text: str) -> int | None:
    line = getattr(exc, "line", None)
    if isinstance(line, int) and line > 0:
        return line
    found = _first_line_number(str(exc))
    rule = re.search(r"\(in rule (\w+)\)", str(exc)) or re.search(r"[Rr]ule '?(\w+)'? ", str(exc))
    if found is None and rule:  # e.g. "Rule 'b' used but not defined (in rule start)": the line of that rule
        name = rule.group(1)
        for number, source_line in enumerate(text.splitlines(), start=1):
            if re.match(rf"\s*[?!]?{re.escape(name)}\s*(\.\d+)?\s*:", source_line):
                return number
    return found


def _column(exc: Exception) -> int | None:
    column = getattr(exc, "column", None)
    return column if isinstance(column, int) and column > 0 else None


def _first_line_number(message: str) -> int | None:
    m = re.search(r"line (\d+)", message) or re.search(r"\((\d+):\d+\)", message) or re.search(r"^(\d+):", message)
    return int(m.group(1)) if m else None


def _llguidance_error(engine_text: str) -> str:
    """The engine's own grammar check, without a tokenizer: '' when llguidance accepts the grammar."""
    import llguidance

    grammar = llguidance.grammar_from("lark", engine_text)
    is_valid, log = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    return "" if is_valid else "; ".join(log) if isinstance(log, list) else str(log)
