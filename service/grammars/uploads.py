"""Grammars tenants upload (``POST /dsls``): checked in the sandbox, owned by the tenant, bounded in number.

The grammar is compiled by both parsers and its examples parsed with it, all in a sandbox worker; the
server keeps only the text and what the worker reported (the engine's form, its warnings). It never
compiles the grammar itself: every parse with it runs in the sandbox too.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.config import Settings
from service.errors import Forbidden, RateLimited, RequestInvalid
from service.grammars.examples import Example
from service.grammars.grammar import Grammar
from service.grammars.registry import GrammarRegistry

__all__ = ["upload"]


async def upload(registry: GrammarRegistry, settings: Settings, *, owner: str | None, name: str, text: str,
                 start: str = "start", description: str = "", examples: Sequence[Example] = ()) -> Grammar:
    """Register ``text`` as DSL ``name`` for ``owner`` (a tenant; None: shared), replacing its earlier upload.

    403 for a shipped DSL's name, 422 for a grammar over the size limit or examples that do not parse, 429
    past the number of uploads an owner may have, 400 (GrammarInvalid) for a grammar that does not compile.
    """
    if name in registry.names():
        raise Forbidden(f"{name!r} is a shipped DSL; choose another name", detail={"name": name})
    if len(text) > settings.max_grammar_chars:
        raise RequestInvalid(f"the grammar has {len(text)} characters; the limit is {settings.max_grammar_chars}",
                             detail=[{"field": "grammar", "message": "too long"}])
    existing = {g.name for g in registry.uploads(owner)}
    if name not in existing and len(existing) >= settings.max_grammars_per_tenant:
        raise RateLimited(f"at most {settings.max_grammars_per_tenant} uploaded grammars per tenant; delete one "
                          "first", detail={"limit": "grammars", "max": settings.max_grammars_per_tenant})
    if registry.sandbox is None:
        raise RuntimeError("uploads need the grammar sandbox")
    compiled = await registry.sandbox.compile(text, start=start, source=f"<{name}>", owner=owner,
                                              codes=[e.code for e in examples])
    bad = [i for i, result in enumerate(compiled.results) if not result.valid]
    if bad:
        raise RequestInvalid(f"examples {bad} do not parse with the grammar",
                             detail=[{"field": f"examples.{i}.code", "message": "does not parse"} for i in bad])
    grammar = Grammar(name=name, description=description, text=text, engine_text=compiled.engine_text,
                      examples=tuple(examples), start=start, structure=text, origin="upload",
                      warnings=compiled.warnings)
    registry.add_upload(grammar, owner=owner)
    return grammar
