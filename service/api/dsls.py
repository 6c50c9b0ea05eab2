"""``/dsls``: the DSLs the service generates (shipped, and grammars tenants publish at run time).

``GET /dsls`` lists the shipped DSLs the caller may use (as its tenant sees them) and the uploads it may use;
``POST /dsls`` publishes a Lark grammar for the caller's tenant (an admin's is shared), compiled in the grammar
sandbox and versioned in the store every replica reads; ``/dsls/{name}/examples`` adds examples,
``/versions`` and ``/rollback`` go through its history; ``DELETE /dsls/{name}`` withdraws it. Nothing here
names another tenant: which tenants have private variants is listed to admins only.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import CallerDep, DSLPublisherDep, GrammarsDep, SettingsDep, UploadBodiesDep
from service.api.schemas import Rollback, VersionInfo, error_responses, version_info
from service.grammars import Comparison, DecodingLimits, Example, Grammar
from service.names import DSL_NAME_PATTERN
from service.security import Caller

__all__ = ["DSLInfo", "router"]

router = APIRouter(tags=["dsls"])


#: A published DSL named in the path: a name no DSL can have is a 422, before the store is asked.
DSLName = Annotated[str, Path(pattern=DSL_NAME_PATTERN)]


class DSLInfo(BaseModel):
    name: str
    description: str
    grammar: str
    #: The grammar's start rule.
    start: str = "start"
    examples: list[dict[str, str | None]]
    operations: list[str] | None = None
    #: The tenant whose private connectors this variant includes (the caller's own, or for admins any).
    tenant: str | None = None
    #: Admins only: tenants with a private variant of this DSL (``GET /dsls/{name}?tenant=...``).
    tenants: list[str] = []
    #: "shipped", "tenant" or "upload".
    origin: str = "shipped"
    #: How far the engine's grammar lets repetitions, terminals, ignored text and nesting go.
    limits: dict[str, int] = {}
    #: What the engine's grammar bounds, compared with the grammar as written (for a person).
    bounded: list[str] = []
    #: What the engine's grammar check remarked without refusing the grammar.
    warnings: list[str] = []
    #: Uploads: the version served (the store keeps every one).
    version: int | None = None
    #: How many examples retrieval draws from (the first three are listed in ``examples``).
    example_count: int = 0
    #: How two programs of the DSL are compared (unordered rules, literals, a meaning plug-in).
    compare: Comparison = Comparison()


class ExampleModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=2000)
    code: str = Field(min_length=1, max_length=4000)


class LimitsModel(BaseModel):
    """How far the grammar the engine decodes with lets what can run away go (the grammar itself parses as
    written)."""

    model_config = ConfigDict(extra="forbid")

    repeat: int = Field(default=DecodingLimits.repeat, ge=1, le=256,
                        description="x* and x+ of rules: at most this many times.")
    terminal_repeat: int = Field(default=DecodingLimits.terminal_repeat, ge=1, le=1024,
                                 description="Repetition inside terminals (X+, regex *, +, {n,}).")
    ignored_chars: int = Field(default=DecodingLimits.ignored_chars, ge=1, le=256,
                               description="%ignore: one ignored piece of at most this many characters per token.")
    depth: int = Field(default=DecodingLimits.depth, ge=1, le=64,
                       description="Rules that recurse: passed through at most this many times.")


class DSLUpload(BaseModel):
    """A Lark grammar to generate against, written as for lark (``*``, ``+``, ``%ignore``, ``%import common``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{
            "name": "kv", "description": "key=value config lines",
            "grammar": 'start: pair ("\\n" pair)?\npair: KEY "=" VALUE\nKEY: /[a-z]{1,16}/\nVALUE: /[a-z0-9]{1,16}/',
            "examples": [{"text": "set the port to 80", "code": "port=80"}],
        }]},
    )

    name: str = Field(pattern=DSL_NAME_PATTERN, description="Name to generate with (dsl field).")
    grammar: str = Field(min_length=1, description="Lark grammar text.")
    start: str = Field(default="start", pattern=r"^[a-z_][a-z0-9_]{0,31}$")
    description: str = Field(default="", max_length=500)
    examples: list[ExampleModel] = Field(default=[], max_length=20, description="Few-shot examples for prompts.")
    limits: LimitsModel = Field(default_factory=LimitsModel)
    compare: Comparison = Field(default_factory=Comparison,
                                description="How two programs are compared: rules whose children's order does not "
                                            "matter, literals without case, a meaning plug-in (sql, cron, regex).")


def _info(grammar: Grammar, caller: Caller, grammars: GrammarsDep) -> DSLInfo:
    return DSLInfo(
        name=grammar.name,
        description=grammar.description,
        grammar=grammar.text,
        start=grammar.start,
        examples=[vars(ex) for ex in grammar.examples[:3]],
        operations=[op.full_name for op in grammar.catalog.operations] if grammar.catalog else None,
        tenant=grammar.tenant,
        tenants=grammars.variant_tenants(grammar.name) if caller.admin and grammar.origin != "upload" else [],
        origin=grammar.origin,
        limits=vars(grammar.limits),
        bounded=list(grammar.bounded),
        warnings=list(grammar.warnings),
        version=grammar.version,
        example_count=len(grammar.examples),
        compare=grammar.compare,
    )


@router.get("/dsls", response_model=list[DSLInfo], responses=error_responses(401, 413))
async def list_dsls(grammars: GrammarsDep, caller: CallerDep) -> list[DSLInfo]:
    """List the DSLs the caller may use: shipped ones (its tenant's variant), shared uploads, its own uploads."""
    return [_info(g, caller, grammars) for g in await grammars.resolve_usable(caller)]


@router.get("/dsls/{name}", response_model=DSLInfo, responses=error_responses(401, 403, 404, 413))
async def get_dsl(name: str, grammars: GrammarsDep, caller: CallerDep, tenant: str | None = None) -> DSLInfo:
    """One DSL with its full grammar, as the caller's tenant sees it (an admin names one with ``?tenant=``)."""
    caller.check_dsl(name)
    return _info(await grammars.resolve(name, tenant=caller.tenant_for(tenant)), caller, grammars)


@router.post("/dsls", status_code=201, response_model=DSLInfo,
             responses=error_responses(400, 401, 403, 413, 422, 429, 503))
async def upload_dsl(body: DSLUpload, grammars: GrammarsDep, publisher: DSLPublisherDep,
                     caller: CallerDep) -> DSLInfo:
    """Publish a grammar for the caller's tenant (an admin's is shared), as the next version of ``name``. The
    answer says what the engine's grammar bounds. 400 with the construct, line and column when lark or the
    engine cannot compile it, or when it does not compile within the time and memory a compile may use."""
    grammar = await publisher.upload(owner=caller.tenant, name=body.name, text=body.grammar, start=body.start,
                                     description=body.description,
                                     examples=[Example(e.text, e.code) for e in body.examples],
                                     limits=DecodingLimits(**body.limits.model_dump()), compare=body.compare)
    return _info(grammar, caller, grammars)


class ExamplesAdded(BaseModel):
    dsl: DSLInfo
    added: int
    #: The first lines that were not added (at most 20): not JSON with string "text" and "code", or code that
    #: does not parse (with where).
    rejected: list[dict[str, Any]]
    #: How many lines were not added in all.
    rejected_count: int = 0


@router.post("/dsls/{name}/examples", response_model=ExamplesAdded,
             responses=error_responses(400, 401, 404, 408, 413, 422, 429, 503),
             openapi_extra={"requestBody": {"required": True, "content": {"text/plain": {
                 "schema": {"type": "string"}, "example": '{"text": "set the port to 80", "code": "port=80"}'}}}})
async def add_examples(name: DSLName, request: Request, grammars: GrammarsDep, publisher: DSLPublisherDep,
                       caller: CallerDep, bodies: UploadBodiesDep, settings: SettingsDep) -> ExamplesAdded:
    """Add examples to one of the caller's DSLs: JSONL, one ``{"text", "code", "context"?}`` a line, each
    parsed with the grammar; those that do not are reported by line. Retrieval uses the rest at once."""
    jsonl = await bodies.read(request, owner=caller.tenant, limit=settings.max_adapter_bytes)
    grammar, added, rejected, count = await publisher.add_examples(owner=caller.tenant, name=name, jsonl=jsonl)
    return ExamplesAdded(dsl=_info(grammar, caller, grammars), added=added, rejected=rejected, rejected_count=count)


@router.get("/dsls/{name}/versions", response_model=list[VersionInfo],
            responses=error_responses(401, 404, 413, 422, 503))
async def list_dsl_versions(name: DSLName, publisher: DSLPublisherDep, caller: CallerDep) -> list[VersionInfo]:
    """The versions of one of the caller's DSLs in the store, oldest first (the newest is served)."""
    return [version_info(v) for v in await publisher.history(owner=caller.tenant, name=name)]


@router.post("/dsls/{name}/rollback", response_model=DSLInfo, responses=error_responses(400, 401, 404, 413, 422,
                                                                                          429, 503))
async def rollback_dsl(name: DSLName, body: Rollback, grammars: GrammarsDep, publisher: DSLPublisherDep,
                       caller: CallerDep) -> DSLInfo:
    """Serve an earlier version again: its content is published as the newest version, on every replica."""
    grammar = await publisher.rollback(owner=caller.tenant, name=name, version=body.version)
    return _info(grammar, caller, grammars)


@router.delete("/dsls/{name}", status_code=204, response_class=Response,
               responses=error_responses(401, 404, 413, 422, 503))
async def delete_dsl(name: DSLName, publisher: DSLPublisherDep, caller: CallerDep) -> Response:
    """Withdraw one of the caller's DSLs on every replica (its versions stay in the store for a rollback)."""
    await publisher.delete(owner=caller.tenant, name=name)
    return Response(status_code=204)

