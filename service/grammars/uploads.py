"""DSLs tenants publish (``POST /dsls``): checked in the sandbox, versioned in the store, served by every replica.

A DSL version is one JSON document in the store (grammar as written, start rule, description, examples,
decoding limits, owner). Publishing compiles it in a sandbox worker (the server never compiles a tenant's
grammar itself), writes the next version and installs it on this replica at once; the other replicas install
it when they see the version (:mod:`service.sync`). Examples go to retrieval for that DSL as soon as the
version is installed. A rollback publishes an earlier version again; a deletion publishes a tombstone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from service.config import Settings
from service.errors import Forbidden, RateLimited, RequestInvalid, UnknownDSL
from service.grammars.bounds import DecodingLimits
from service.grammars.examples import Example
from service.grammars.grammar import Grammar, ParseResult
from service.grammars.registry import GrammarRegistry
from service.retrieval import Retriever
from service.store import Version, Versions, owner_key, tenant_of

__all__ = ["DSLPublisher"]

_KIND = "dsls"


@dataclass(frozen=True)
class _Checked:
    """A compiled DSL and the parse of each example it was checked with."""

    grammar: Grammar
    examples_checked: tuple[ParseResult, ...]


class DSLPublisher:
    """Publish, change, roll back and delete an owner's DSLs; install versions on this replica."""

    kind = _KIND

    def __init__(self, registry: GrammarRegistry, retriever: Retriever, versions: Versions, settings: Settings):
        self.registry = registry
        self.retriever = retriever
        self.versions = versions
        self.settings = settings
        #: The version of each (owner, name) this replica serves (a deletion included), for service.sync.
        self.installed: dict[tuple[str, str], int] = {}

    async def upload(self, *, owner: str | None, name: str, text: str, start: str = "start", description: str = "",
                     examples: Sequence[Example] = (), limits: DecodingLimits | None = None) -> Grammar:
        """Publish ``text`` as the next version of DSL ``name`` of ``owner`` (a tenant; None: shared).

        403 for a shipped DSL's name, 422 for a grammar over the size limit or examples that do not parse, 429
        past the uploads or bytes an owner may have, 400 (GrammarInvalid) for a grammar that does not compile.
        """
        settings = self.settings
        if name in self.registry.names():
            raise Forbidden(f"{name!r} is a shipped DSL; choose another name", detail={"name": name})
        if len(text) > settings.max_grammar_chars:
            raise RequestInvalid(f"the grammar has {len(text)} characters; the limit is "
                                 f"{settings.max_grammar_chars}", detail=[{"field": "grammar", "message": "too long"}])
        existing = {g.name for g in self.registry.uploads(owner)}
        if name not in existing and len(existing) >= settings.max_grammars_per_tenant:
            raise RateLimited(f"at most {settings.max_grammars_per_tenant} uploaded grammars per tenant; delete one "
                              "first", detail={"limit": "grammars", "max": settings.max_grammars_per_tenant})
        record = {"name": name, "owner": owner, "grammar": text, "start": start, "description": description,
                  "examples": [asdict(e) for e in examples], "limits": asdict(limits or DecodingLimits())}
        checked = await self._compile(record, version=0)  # refuses before anything is written
        return await self._publish(record, checked)

    async def add_examples(self, *, owner: str | None, name: str, jsonl: str) -> tuple[Grammar, int, list[dict]]:
        """Add the JSONL examples that parse with the DSL (a new version): the DSL, how many were added, and
        the lines that were not, with why."""
        grammar = self._own(owner, name)
        rows: list[tuple[int, Example]] = []
        rejects: list[dict[str, Any]] = []
        for number, line in enumerate(jsonl.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows.append((number, Example(str(row["text"]), str(row["code"]), row.get("context"))))
            except (ValueError, KeyError, TypeError):
                rejects.append({"line": number, "message": 'not a JSON object with "text" and "code"'})
        if len(grammar.examples) + len(rows) > self.settings.max_examples_per_dsl:
            raise RequestInvalid(f"a DSL holds at most {self.settings.max_examples_per_dsl} examples",
                                 detail=[{"field": "body", "message": "too many examples"}])
        record = _record(grammar, owner)
        checked = await self._compile({**record, "examples": [asdict(e) for _, e in rows]}, version=0)
        added = []
        for (number, example), result in zip(rows, checked.examples_checked, strict=True):
            if result.valid:
                added.append(example)
            else:
                error = result.error
                rejects.append({"line": number, "message": f"the code does not parse: {error.message}",
                                "code_line": error.line, "code_column": error.column})
        rejects.sort(key=lambda r: r["line"])
        if not added:
            return grammar, 0, rejects
        record["examples"] += [asdict(e) for e in added]
        updated = replace(checked.grammar, examples=grammar.examples + tuple(added))
        return await self._publish(record, _Checked(updated, ())), len(added), rejects

    async def history(self, *, owner: str | None, name: str) -> list[Version]:
        history = await asyncio.to_thread(self.versions.history, _KIND, owner_key(owner), name)
        if not history:
            raise UnknownDSL(f"no uploaded dsl {name!r} of yours", detail={"name": name})
        return history

    async def rollback(self, *, owner: str | None, name: str, version: int) -> Grammar:
        """Publish version ``version``'s content again, as the newest version."""
        published = await asyncio.to_thread(self.versions.republish, _KIND, owner_key(owner), name, version)
        if published is None:
            raise UnknownDSL(f"dsl {name!r} of yours has no version {version}", detail={"name": name,
                                                                                       "version": version})
        await self.install(published)
        return self._own(owner, name)

    async def delete(self, *, owner: str | None, name: str) -> None:
        self._own(owner, name)
        await self.install(await asyncio.to_thread(self.versions.publish, _KIND, owner_key(owner), name, None,
                                                   suffix="json"))

    async def install(self, version: Version) -> None:
        """Serve ``version`` on this replica (a deletion: stop serving the DSL)."""
        owner = tenant_of(version.owner)
        self.installed[(version.owner, version.name)] = version.number
        if version.deleted:
            if any(g.name == version.name for g in self.registry.uploads(owner)):
                self.registry.remove_upload(version.name, owner=owner)
            await asyncio.to_thread(self.retriever.set_upload, owner, version.name, ())
            return
        record = json.loads(await asyncio.to_thread(self.versions.read, version))
        await self._install(await self._compile(record, version=version.number), owner)

    def _own(self, owner: str | None, name: str) -> Grammar:
        grammar = next((g for g in self.registry.uploads(owner) if g.name == name), None)
        if grammar is None:
            raise UnknownDSL(f"no uploaded dsl {name!r} of yours", detail={"name": name})
        return grammar

    async def _compile(self, record: dict[str, Any], *, version: int) -> _Checked:
        limits = DecodingLimits(**record.get("limits", {}))
        examples = [Example(e["text"], e["code"], e.get("context")) for e in record.get("examples", [])]
        if self.registry.sandbox is None:
            raise RuntimeError("uploads need the grammar sandbox")
        compiled = await self.registry.sandbox.compile(
            record["grammar"], start=record["start"], source=f"<{record['name']}>", limits=limits,
            owner=record["owner"], codes=[e.code for e in examples])
        grammar = Grammar(name=record["name"], description=record.get("description", ""), text=record["grammar"],
                          engine_text=compiled.engine_text, examples=tuple(examples), start=record["start"],
                          structure=record["grammar"], origin="upload", limits=limits, bounded=compiled.bounded,
                          warnings=compiled.warnings, owner=record["owner"], version=version)
        return _Checked(grammar, compiled.results)

    async def _publish(self, record: dict[str, Any], checked: _Checked) -> Grammar:
        bad = [i for i, result in enumerate(checked.examples_checked) if not result.valid]
        if bad:
            raise RequestInvalid(f"examples {bad} do not parse with the grammar",
                                 detail=[{"field": f"examples.{i}.code", "message": "does not parse"} for i in bad])
        owner = record["owner"]
        data = json.dumps(record).encode()
        version = await asyncio.to_thread(self.versions.publish_within, _KIND, owner_key(owner), record["name"],
                                          data, suffix="json",
                                          max_owner_bytes=self.settings.max_store_bytes_per_tenant)
        self.installed[(version.owner, version.name)] = version.number
        grammar = replace(checked.grammar, version=version.number)
        await self._install(_Checked(grammar, checked.examples_checked), owner)
        return grammar

    async def _install(self, checked: _Checked, owner: str | None) -> None:
        grammar = checked.grammar
        await asyncio.to_thread(self.retriever.set_upload, owner, grammar.name, grammar.examples)
        self.registry.add_upload(grammar, owner=owner)


def _record(grammar: Grammar, owner: str | None) -> dict[str, Any]:
    return {"name": grammar.name, "owner": owner, "grammar": grammar.text, "start": grammar.start,
            "description": grammar.description, "examples": [asdict(e) for e in grammar.examples],
            "limits": asdict(grammar.limits)}
