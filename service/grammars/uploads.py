"""DSLs tenants publish (``POST /dsls``): checked in the sandbox, versioned in the store, served by every replica.

A DSL version is one JSON document in the store (grammar as written, start rule, description, examples,
decoding limits, owner). Publishing compiles it in a sandbox worker (the server never compiles a tenant's
grammar itself), writes the next version and installs it on this replica at once; the other replicas install
it when they see the version (:mod:`service.sync`), compiling it when a request first needs it
(:meth:`GrammarRegistry.materialize`); retrieval indexes a version's examples when a request first asks for
them. A rollback publishes an earlier version again; a deletion publishes a tombstone. Every
change goes through the owner's gate (:mod:`service.publishing`: one at a time, quotas counted in the store,
a rate per minute), and JSONL examples are read on the upload pool (:mod:`service.upload_pool`), bounded in
lines and in rejected lines, each line a typed :class:`ExampleLine`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.config import Settings
from service.errors import Forbidden, RequestInvalid, UnknownDSL
from service.grammars.bounds import DecodingLimits
from service.grammars.comparison import Comparison
from service.grammars.examples import Example
from service.grammars.grammar import Grammar, ParseResult
from service.grammars.registry import GrammarRegistry
from service.publishing import OwnerGate
from service.store import Kind, Version, Versions, owner_key, tenant_of
from service.upload_pool import UploadPool

__all__ = ["DSLPublisher", "ExampleLine", "grammar_size_problem", "read_example_lines"]

_KIND = Kind.DSLS
#: Rejected lines listed in an answer (the rest are counted).
_REJECTS_LISTED = 20


def grammar_size_problem(text: str, settings: Settings) -> str | None:
    """The one grammar-size rule (uploads and a request's own grammar): why ``text`` is too long, or None."""
    if len(text) > settings.max_grammar_chars:
        return f"the grammar has {len(text)} characters; the limit is {settings.max_grammar_chars}"
    return None


class ExampleLine(BaseModel):
    """One JSONL line of examples: ``{"text", "code", "context"?}``, strings within the request limits."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: str = Field(min_length=1, max_length=2000)
    code: str = Field(min_length=1, max_length=4000)
    context: str | None = Field(default=None, max_length=4000)


def read_example_lines(body: bytes, *, max_lines: int, max_rejected: int) -> tuple[list[tuple[int, Example]],
                                                                                   list[dict[str, Any]], int]:
    """JSONL examples: the rows read (with their line numbers), the first rejected lines (line and why), and
    how many were rejected. RequestInvalid past ``max_lines`` lines or ``max_rejected`` rejected ones: a body
    that is mostly not examples is refused whole, never answered line by line (a 3.8 MB body of 2M bad lines
    once got a 140 MB answer)."""
    if body.count(b"\n") + (not body.endswith(b"\n")) > max_lines:
        raise RequestInvalid(f"at most {max_lines} lines of examples per request",
                             detail=[{"field": "body", "message": "too many lines"}])
    rows: list[tuple[int, Example]] = []
    rejects: list[dict[str, Any]] = []
    rejected = 0
    for number, line in enumerate(body.decode("utf-8", "replace").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = ExampleLine.model_validate_json(line)
        except ValidationError as exc:
            rejected += 1
            if rejected > max_rejected:
                raise RequestInvalid(f"more than {max_rejected} lines are not examples; nothing was added",
                                     detail=[{"field": "body", "message": "too many rejected lines"}]) from None
            if len(rejects) < _REJECTS_LISTED:
                first = exc.errors(include_input=False, include_url=False)[0]
                where = ".".join(str(p) for p in first["loc"])
                rejects.append({"line": number, "message": 'not a JSON object with string "text" and "code"'
                                + (f" ({where}: {first['msg']})" if where else "")})
            continue
        rows.append((number, Example(row.text, row.code, row.context)))
    return rows, rejects, rejected


@dataclass(frozen=True)
class _Checked:
    """A compiled DSL and the parse of each example it was checked with."""

    grammar: Grammar
    examples_checked: tuple[ParseResult, ...]


class DSLPublisher:
    """Publish, change, roll back and delete an owner's DSLs; install versions on this replica."""

    kind = _KIND

    def __init__(self, registry: GrammarRegistry, versions: Versions, settings: Settings, *,
                 gate: OwnerGate, pool: UploadPool) -> None:
        self.registry = registry
        self.versions = versions
        self.settings = settings
        self.gate = gate
        self.pool = pool
        #: The version of each (owner, name) this replica serves (a deletion included), for service.sync.
        self.installed: dict[tuple[str, str], int] = {}

    async def upload(self, *, owner: str | None, name: str, text: str, start: str = "start", description: str = "",
                     examples: Sequence[Example] = (), limits: DecodingLimits | None = None,
                     compare: Comparison | None = None) -> Grammar:
        """Publish ``text`` as the next version of DSL ``name`` of ``owner`` (a tenant; None: shared).

        403 for a shipped DSL's name, 422 for a grammar over the size limit or examples that do not parse, 429
        past the uploads or bytes an owner may have, 400 (GrammarInvalid) for a grammar that does not compile.
        """
        if name in self.registry.names():
            raise Forbidden(f"{name!r} is a shipped DSL; choose another name", detail={"name": name})
        if problem := grammar_size_problem(text, self.settings):
            raise RequestInvalid(problem, detail=[{"field": "grammar", "message": "too long"}])
        record = {"name": name, "owner": owner, "grammar": text, "start": start, "description": description,
                  "examples": [asdict(e) for e in examples], "limits": asdict(limits or DecodingLimits()),
                  "compare": (compare or Comparison()).model_dump(mode="json")}
        checked = await self._compile(record, version=0)  # refuses before anything is written
        return await self._publish(record, checked)

    async def add_examples(self, *, owner: str | None, name: str,
                           jsonl: bytes) -> tuple[Grammar, int, list[dict], int]:
        """Add the JSONL examples that parse with the DSL (a new version): the DSL, how many were added, the
        first lines that were not (with why), and how many were not."""
        grammar = await self._own(owner, name)
        settings = self.settings
        rows, rejects, rejected = await self.pool.run(owner, read_example_lines, jsonl,
                                                      max_lines=settings.max_example_lines,
                                                      max_rejected=settings.max_rejected_lines)
        if len(grammar.examples) + len(rows) > self.settings.max_examples_per_dsl:
            raise RequestInvalid(f"a DSL holds at most {self.settings.max_examples_per_dsl} examples",
                                 detail=[{"field": "body", "message": "too many examples"}])
        record = _record(grammar, owner)
        checked = await self._compile({**record, "examples": [asdict(e) for _, e in rows]}, version=0)
        added = []
        for (number, example), result in zip(rows, checked.examples_checked, strict=True):
            if result.valid:
                added.append(example)
                continue
            rejected += 1
            if rejected > settings.max_rejected_lines:
                raise RequestInvalid(f"more than {settings.max_rejected_lines} lines are not examples of the DSL; "
                                     "nothing was added",
                                     detail=[{"field": "body", "message": "too many rejected lines"}])
            if len(rejects) < _REJECTS_LISTED:
                error = result.error
                rejects.append({"line": number, "message": f"the code does not parse: {error.message}",
                                "code_line": error.line, "code_column": error.column})
        rejects.sort(key=lambda r: r["line"])
        if not added:
            return grammar, 0, rejects, rejected
        record["examples"] += [asdict(e) for e in added]
        updated = replace(checked.grammar, examples=grammar.examples + tuple(added))
        return await self._publish(record, _Checked(updated, ())), len(added), rejects, rejected

    async def history(self, *, owner: str | None, name: str) -> list[Version]:
        return await self.gate.history(_KIND, owner_key(owner), name, unknown=UnknownDSL)

    async def rollback(self, *, owner: str | None, name: str, version: int) -> Grammar:
        """Publish version ``version``'s content again, as the newest version, within the owner's quotas."""
        record = json.loads(await self.gate.content(_KIND, owner_key(owner), name, version, unknown=UnknownDSL))
        return await self._publish(record, await self._compile(record, version=0))

    async def delete(self, *, owner: str | None, name: str) -> None:
        await self._own(owner, name)
        await self.install(await self.gate.withdraw(_KIND, owner_key(owner), name, suffix="json"))

    async def install(self, version: Version) -> None:
        """Serve ``version`` on this replica (a deletion: stop serving the DSL). A version is compiled when a
        request first needs it (:meth:`GrammarRegistry.resolve`); one from a store written before the journal
        (no description recorded) at once."""
        owner = tenant_of(version.owner)
        self.installed[(version.owner, version.name)] = version.number
        if version.deleted:
            with contextlib.suppress(UnknownDSL):
                self.registry.remove_upload(version.name, owner=owner)
            return
        self.registry.add_pending(version, owner=owner)
        if not version.meta:
            await self.registry.compiled(owner, version.name)

    async def _own(self, owner: str | None, name: str) -> Grammar:
        await self.registry.compiled(owner, name)
        grammar = next((g for g in self.registry.uploads(owner) if g.name == name), None)
        if grammar is None:
            raise UnknownDSL(f"no uploaded dsl {name!r} of yours", detail={"name": name})
        return grammar

    async def _compile(self, record: dict[str, Any], *, version: int) -> _Checked:
        return _Checked(*await self.registry.compile_upload(record, version=version))

    async def _publish(self, record: dict[str, Any], checked: _Checked) -> Grammar:
        bad = [i for i, result in enumerate(checked.examples_checked) if not result.valid]
        if bad:
            raise RequestInvalid(f"examples {bad} do not parse with the grammar",
                                 detail=[{"field": f"examples.{i}.code", "message": "does not parse"} for i in bad])
        owner = record["owner"]
        data = json.dumps(record).encode()
        version = await self.gate.publish(_KIND, owner_key(owner), record["name"], data, suffix="json",
                                          max_items=self.settings.max_grammars_per_tenant,
                                          meta={"description": record.get("description", "")})
        self.installed[(version.owner, version.name)] = version.number
        grammar = replace(checked.grammar, version=version.number)
        self.registry.add_upload(grammar, owner=owner, version=version)
        return grammar


def _record(grammar: Grammar, owner: str | None) -> dict[str, Any]:
    return {"name": grammar.name, "owner": owner, "grammar": grammar.text, "start": grammar.start,
            "description": grammar.description, "examples": [asdict(e) for e in grammar.examples],
            "limits": asdict(grammar.limits), "compare": grammar.compare.model_dump(mode="json")}
