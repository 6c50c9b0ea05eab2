"""The DSLs the service knows: shipped grammars, tenants' variants of them, and tenants' uploads.

A shipped DSL is ``grammars/<name>.lark`` plus ``grammars/<name>.yaml`` (description, start rule, examples file
and, for catalog DSLs such as ``flow``, the catalog compiled into the grammar). A tenant with private
connectors (``grammars/tenants/<tenant>.yaml``) gets its own variant. Uploads (``POST /dsls``) belong to their
owner (a tenant, or None for an admin's shared upload) and are looked up by owner: another tenant's upload
is as unknown as one that does not exist.

An upload another replica published is *pending* here until a request needs it: :meth:`resolve` reads it
from the store's ``versions`` and compiles it in the sandbox then (one compile however many requests wait), and
at most ``max_compiled`` uploads stay compiled, the least recently used going back to pending. So a replica's
start and memory do not grow with the number of DSLs published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from service.errors import NL2DSLError, RequestInvalid, StoreUnavailable, UnknownDSL
from service.grammars.bounds import DecodingLimits
from service.grammars.catalog import Catalog
from service.grammars.comparison import Comparison
from service.grammars.compile import compile_grammar
from service.grammars.examples import Example, load_examples
from service.grammars.grammar import Grammar, ParseResult
from service.grammars.sandbox import GrammarSandbox
from service.grammars.tenants import TenantConfig, TenantConfigs
from service.policy import Policy
from service.security import Caller, serves
from service.store import Version, Versions

__all__ = ["GrammarRegistry", "load_grammar_file"]

log = logging.getLogger("nl2dsl.grammars")


class GrammarRegistry:
    """Shipped DSLs and tenant variants (``load``, at start-up) and uploads, looked up per request.

    With ``narrow_to_policies`` (the service, when safety is on) every grammar's decoding is narrowed to its
    tenant's policy (the shared ones to the default policy), so constrained output cannot break it.
    ``sandbox`` compiles and parses uploads, ``versions`` (the store) holds the published ones (the service;
    tools that only read shipped grammars need neither).
    """

    def __init__(self, directory: Path, *, tenants: TenantConfigs | None = None, narrow_to_policies: bool = False,
                 sandbox: GrammarSandbox | None = None, versions: Versions | None = None,
                 max_compiled: int = 2000) -> None:
        self.directory = Path(directory)
        self.tenants = tenants if tenants is not None else TenantConfigs.load(self.directory)
        self.narrow_to_policies = narrow_to_policies
        self.sandbox = sandbox
        self.versions = versions
        self.max_compiled = max_compiled
        self._grammars: dict[str, Grammar] = {}
        self._variants: dict[tuple[str, str], Grammar] = {}
        self._uploads: OrderedDict[tuple[str | None, str], Grammar] = OrderedDict()  # least recently used first
        #: Uploads known from the store's journal, not compiled on this replica (yet, or any more).
        self._pending: dict[tuple[str | None, str], Version] = {}
        self._loading: dict[tuple[str | None, str], asyncio.Task[None]] = {}
        self._sources: dict[tuple[str | None, str], Version] = {}

    def load(self) -> GrammarRegistry:
        """Compile every ``*.lark`` in the directory, then each tenant's variant; the first failure stops it."""
        for path in sorted(self.directory.glob("*.lark")):
            grammar = load_grammar_file(path, policy=self._policy(None))
            self._grammars[grammar.name] = grammar
        for name, base in self._grammars.items():
            for config in self.tenants.with_catalogs(name):
                self._variants[(config.tenant, name)] = _variant(base, config, policy=self._policy(config.tenant))
        return self

    def _policy(self, tenant: str | None) -> Policy | None:
        return self.tenants.policy(tenant) if self.narrow_to_policies else None

    def get(self, name: str, *, tenant: str | None = None) -> Grammar:
        """The DSL as ``tenant`` sees it: its own upload, a shared upload, its variant, or the shipped one."""
        for owner in _owners(tenant):
            if (owner, name) in self._uploads:
                return self._uploads[(owner, name)]
        return self._shipped(name, tenant)

    async def resolve(self, name: str, *, tenant: str | None = None) -> Grammar:
        """:meth:`get`, with a pending upload the caller would get compiled first (one look-up per owner)."""
        for owner in _owners(tenant):
            key = (owner, name)
            if key not in self._uploads and key in self._pending:
                await self.compiled(owner, name)
            if key in self._uploads:
                self._uploads.move_to_end(key)
                return self._uploads[key]
        return self._shipped(name, tenant)

    def _shipped(self, name: str, tenant: str | None) -> Grammar:
        """The shipped DSL ``name``, as ``tenant``'s variant where it has one."""
        if tenant is not None and (tenant, name) in self._variants:
            return self._variants[(tenant, name)]
        try:
            return self._grammars[name]
        except KeyError:
            raise UnknownDSL(f"unknown dsl {name!r}", detail={"available": self.names()}) from None

    async def compiled(self, owner: str | None, name: str) -> None:
        """Have ``owner``'s upload ``name`` compiled if it is pending (before it is changed or deleted); again if
        a newer version arrived while it compiled (a compile that fails drops the version from pending)."""
        while (owner, name) in self._pending:
            await self._load(owner, name)

    async def resolve_usable(self, caller: Caller) -> list[Grammar]:
        """:meth:`usable`, with the pending uploads the caller may use compiled first."""
        for owner, name in [key for key in self._pending if serves((key[0],), caller.tenant)]:
            if caller.may_use_dsl(name):
                await self.compiled(owner, name)
        return self.usable(caller)

    async def _load(self, owner: str | None, name: str) -> None:
        key = (owner, name)
        task = self._loading.get(key)
        if task is None:
            task = asyncio.create_task(self.materialize(self._pending[key], owner=owner))
            self._loading[key] = task
            task.add_done_callback(lambda _: self._loading.pop(key, None))
        await asyncio.shield(task)

    async def materialize(self, version: Version, *, owner: str | None) -> None:
        """Read ``version`` from the store, compile it and serve it. One that cannot be is dropped, and said
        (UnknownDSL; StoreUnavailable when the store cannot be read: the version stays pending)."""
        if self.versions is None:
            raise RuntimeError("published uploads need the store")
        try:
            record = json.loads(await asyncio.to_thread(self.versions.read, version))
            grammar, _ = await self.compile_upload(record, version=version.number)
        except StoreUnavailable:
            raise
        except (NL2DSLError, ValueError, KeyError, TypeError) as exc:
            with contextlib.suppress(UnknownDSL):
                self.remove_upload(version.name, owner=owner)
            log.error("dsl %s/%s version %d cannot be served: %s", version.owner, version.name, version.number,
                      getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}")
            raise UnknownDSL(f"dsl {version.name!r} cannot be served on this replica",
                             detail={"name": version.name}) from None
        self.add_upload(grammar, owner=owner, version=version)

    async def compile_upload(self, record: dict[str, Any], *,
                             version: int) -> tuple[Grammar, tuple[ParseResult, ...]]:
        """An upload's stored record (:mod:`service.grammars.uploads`) compiled in the sandbox: the grammar, and
        the parse of each of its examples."""
        if self.sandbox is None:
            raise RuntimeError("uploads need the grammar sandbox")
        limits = DecodingLimits(**record.get("limits", {}))
        compare = Comparison.model_validate(record.get("compare") or {})
        if problems := compare.check(record["grammar"]):
            raise RequestInvalid(problems[0], detail=[{"field": "compare.unordered", "message": p} for p in problems])
        examples = [Example(e["text"], e["code"], e.get("context")) for e in record.get("examples", [])]
        compiled = await self.sandbox.compile(
            record["grammar"], start=record["start"], source=f"<{record['name']}>", limits=limits,
            owner=record["owner"], codes=[e.code for e in examples])
        grammar = Grammar(name=record["name"], description=record.get("description", ""), text=record["grammar"],
                          engine_text=compiled.engine_text, examples=tuple(examples), start=record["start"],
                          structure=record["grammar"], origin="upload", limits=limits, bounded=compiled.bounded,
                          warnings=compiled.warnings, owner=record["owner"], version=version, compare=compare)
        return grammar, compiled.results

    def add_pending(self, version: Version, *, owner: str | None) -> None:
        """An upload to compile when first needed (a newer version replaces what this replica served)."""
        self._uploads.pop((owner, version.name), None)
        self._pending[(owner, version.name)] = version

    def pending(self, owner: str | None) -> list[str]:
        return sorted(name for o, name in self._pending if o == owner)

    async def parse(self, grammar: Grammar, code: str, *, owner: str | None) -> ParseResult:
        """Parse ``code`` beside the event loop: ours in a thread (bounded by construction), an upload in the
        sandbox (bounded in time and memory; ParseLimit past either)."""
        if grammar.parser is not None:
            return await asyncio.to_thread(grammar.parse, code)
        if self.sandbox is None:
            raise RuntimeError("uploaded grammars need the sandbox")
        return await self.sandbox.parse(grammar.text, code, start=grammar.start, source=f"<{grammar.name}>",
                                        limits=grammar.limits, owner=owner)

    async def one_off(self, dsl: Grammar, text: str, *, owner: str | None) -> Grammar:
        """``dsl`` decoded and parsed with ``text``, a grammar sent with one request: compiled in the sandbox like
        an upload (GrammarInvalid if it does not compile, within the sandbox's bounds), used once, never kept."""
        if self.sandbox is None:
            raise RuntimeError("one-off grammars need the sandbox")
        limits = DecodingLimits()
        compiled = await self.sandbox.compile(text, start="start", source=f"<the request's grammar for {dsl.name}>",
                                              limits=limits, owner=owner)
        return replace(dsl, text=text, engine_text=compiled.engine_text, structure=text, parser=None, catalog=None,
                       start="start", origin="upload", limits=limits, bounded=compiled.bounded,
                       warnings=compiled.warnings, owner=owner, version=None)

    def usable(self, caller: Caller) -> list[Grammar]:
        """The DSLs ``caller`` may use: the shipped ones as its tenant sees them, shared uploads, its own."""
        tenant = caller.tenant
        shipped = [self.get(name, tenant=tenant) for name in self.names()]
        uploads = [g for owner in reversed(_owners(tenant)) for g in self.uploads(owner)]
        return [g for g in shipped + uploads if caller.may_use_dsl(g.name)]

    def usable_names(self, caller: Caller) -> list[tuple[str, str | None]]:
        """``(name, owner)`` of each DSL :meth:`usable` lists, pending uploads included: naming them compiles
        nothing."""
        uploads = [(name, owner) for owner in reversed(_owners(caller.tenant))
                   for name in sorted({n for o, n in [*self._uploads, *self._pending] if o == owner})]
        return [(n, o) for n, o in [(name, None) for name in self.names()] + uploads if caller.may_use_dsl(n)]

    def names(self) -> list[str]:
        """The shipped DSLs."""
        return sorted(self._grammars)

    def variant_tenants(self, name: str) -> list[str]:
        """Tenants with a private variant of DSL ``name`` (for admins: which ``?tenant=`` to ask for)."""
        return sorted(t for t, dsl in self._variants if dsl == name)

    def uploads(self, owner: str | None) -> list[Grammar]:
        """Grammars uploaded by ``owner`` (a tenant; None: the shared ones), by name."""
        return [g for (o, name), g in sorted(self._uploads.items(), key=lambda kv: kv[0][1]) if o == owner]

    def add_upload(self, grammar: Grammar, *, owner: str | None, version: Version | None = None) -> None:
        """Serve a compiled upload; past ``max_compiled``, the least recently used one published from the journal
        (``version``: where it can be compiled again from) goes back to pending."""
        key = (owner, grammar.name)
        newer = self._pending.get(key)
        if version is not None and newer is not None and newer.number > version.number:
            return  # a newer version arrived while this one compiled: that one is served, once compiled
        self._pending.pop(key, None)
        self._uploads[key] = grammar
        self._uploads.move_to_end(key)
        if version is not None:
            self._sources[key] = version
        while len(self._uploads) > self.max_compiled:
            victim = next((k for k in self._uploads if k in self._sources and k != key), None)
            if victim is None:
                break
            del self._uploads[victim]
            self._pending[victim] = self._sources[victim]

    def remove_upload(self, name: str, *, owner: str | None) -> None:
        """Stop serving an upload (compiled or pending)."""
        self._sources.pop((owner, name), None)
        if self._uploads.pop((owner, name), None) is None and self._pending.pop((owner, name), None) is None:
            raise UnknownDSL(f"no uploaded dsl {name!r} of yours", detail={"name": name})

    def __iter__(self) -> Iterator[Grammar]:
        return iter(self._grammars[name] for name in self.names())

    def __len__(self) -> int:
        return len(self._grammars)


def load_grammar_file(path: Path, *, policy: Policy | None = None) -> Grammar:
    """Load ``<dsl>.lark`` with its ``<dsl>.yaml`` (optional) and compile it, decoding narrowed to ``policy``.

    The yaml may set ``limits`` (service.grammars.bounds.DecodingLimits) for what the engine's grammar bounds.
    """
    meta: dict[str, Any] = {}
    meta_path = path.with_suffix(".yaml")
    if meta_path.exists():
        meta = yaml.safe_load(meta_path.read_text()) or {}
    catalog = Catalog.from_dict(meta["catalog"], source=meta_path.name) if meta.get("catalog") else None
    structure = path.read_text()
    examples: tuple[Example, ...] = ()
    if meta.get("examples"):
        examples = tuple(load_examples(path.parent / meta["examples"]))
    return _compile(meta.get("name", path.stem), structure, catalog, policy, source=path.name,
                    start=meta.get("start", "start"), description=meta.get("description", ""), examples=examples,
                    limits=DecodingLimits(**meta.get("limits", {})),
                    compare=Comparison.model_validate(meta.get("compare") or {}))


def _variant(base: Grammar, config: TenantConfig, *, policy: Policy | None) -> Grammar:
    """``base`` with a tenant's private connectors added to its catalog, decoding narrowed to ``policy``."""
    types = base.catalog.types if base.catalog else {}
    extra = Catalog.from_dict({"types": types, **config.catalog}, source=config.source)
    catalog = base.catalog.merged(extra) if base.catalog else extra
    return _compile(base.name, base.structure, catalog, policy, source=config.source, start=base.start,
                    description=base.description, examples=base.examples, limits=base.limits, tenant=config.tenant,
                    compare=base.compare)


def _compile(name: str, structure: str, catalog: Catalog | None, policy: Policy | None, **options: Any) -> Grammar:
    """The structure plus the catalog's rules, parsed as is; decoded without the policy's denied operations."""
    decoding = catalog.without(policy.denied_operations) if catalog is not None and policy is not None else catalog
    return compile_grammar(name, _with_catalog(structure, catalog), structure=structure, catalog=catalog,
                           decoding_text=_with_catalog(structure, decoding), policy=policy, **options)


def _with_catalog(structure: str, catalog: Catalog | None) -> str:
    """The grammar text: the structure and, for a catalog DSL, the catalog's rules."""
    if catalog is None:
        return structure
    return structure.rstrip("\n") + "\n\n" + catalog.grammar_rules()


def _owners(tenant: str | None) -> tuple[str | None, ...]:
    """Whose uploads serve a request of ``tenant`` (:func:`service.security.serves`), its own first: the
    tenant's, then the shared ones (None)."""
    return (tenant, None) if tenant is not None else (None,)
