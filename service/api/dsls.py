"""``/dsls``: the DSLs the service generates (shipped, and grammars tenants upload at run time).

``GET /dsls`` lists the shipped DSLs the caller may use (as its tenant sees them) and the uploads it may use;
``POST /dsls`` registers a Lark grammar for the caller's tenant (an admin's upload is shared), compiled in the
grammar sandbox; ``DELETE /dsls/{name}`` removes an upload. Nothing here names another tenant: which tenants
have private variants is listed to admins only.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import CallerDep, GrammarsDep, SettingsDep
from service.api.schemas import error_responses
from service.grammars import Example, Grammar
from service.grammars.uploads import upload
from service.security import Caller

__all__ = ["DSLInfo", "router"]

router = APIRouter(tags=["dsls"])


class DSLInfo(BaseModel):
    name: str
    description: str
    grammar: str
    examples: list[dict[str, str | None]]
    operations: list[str] | None = None
    #: The tenant whose private connectors this variant includes (the caller's own, or for admins any).
    tenant: str | None = None
    #: Admins only: tenants with a private variant of this DSL (``GET /dsls/{name}?tenant=...``).
    tenants: list[str] = []
    #: "shipped", "tenant" or "upload".
    origin: str = "shipped"
    #: What the engine's grammar check remarked without refusing the grammar.
    warnings: list[str] = []


class ExampleModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=2000)
    code: str = Field(min_length=1, max_length=4000)


class DSLUpload(BaseModel):
    """A Lark grammar to generate against. Bounded: no ``*``/``+``/``%ignore`` (see README)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{
            "name": "kv", "description": "key=value config lines",
            "grammar": 'start: pair ("\\n" pair)?\npair: KEY "=" VALUE\nKEY: /[a-z]{1,16}/\nVALUE: /[a-z0-9]{1,16}/',
            "examples": [{"text": "set the port to 80", "code": "port=80"}],
        }]},
    )

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="Name to generate with (dsl field).")
    grammar: str = Field(min_length=1, description="Lark grammar text.")
    start: str = Field(default="start", pattern=r"^[a-z_][a-z0-9_]{0,31}$")
    description: str = Field(default="", max_length=500)
    examples: list[ExampleModel] = Field(default=[], max_length=20, description="Few-shot examples for prompts.")


def _info(grammar: Grammar, caller: Caller, grammars: GrammarsDep) -> DSLInfo:
    return DSLInfo(
        name=grammar.name,
        description=grammar.description,
        grammar=grammar.text,
        examples=[vars(ex) for ex in grammar.examples[:3]],
        operations=[op.full_name for op in grammar.catalog.operations] if grammar.catalog else None,
        tenant=grammar.tenant,
        tenants=grammars.variant_tenants(grammar.name) if caller.admin and grammar.origin != "upload" else [],
        origin=grammar.origin,
        warnings=list(grammar.warnings),
    )


@router.get("/dsls", response_model=list[DSLInfo], responses=error_responses(401, 413))
async def list_dsls(grammars: GrammarsDep, caller: CallerDep) -> list[DSLInfo]:
    """List the DSLs the caller may use: shipped ones (its tenant's variant), shared uploads, its own uploads."""
    shipped = [grammars.get(name, tenant=caller.tenant) for name in grammars.names() if caller.may_use_dsl(name)]
    uploads = grammars.uploads(None) + (grammars.uploads(caller.tenant) if caller.tenant is not None else [])
    return [_info(g, caller, grammars) for g in shipped + uploads]


@router.get("/dsls/{name}", response_model=DSLInfo, responses=error_responses(401, 403, 404, 413))
async def get_dsl(name: str, grammars: GrammarsDep, caller: CallerDep, tenant: str | None = None) -> DSLInfo:
    """One DSL with its full grammar, as the caller's tenant sees it (an admin names one with ``?tenant=``)."""
    caller.check_dsl(name)
    return _info(grammars.get(name, tenant=caller.tenant_for(tenant)), caller, grammars)


@router.post("/dsls", status_code=201, response_model=DSLInfo,
             responses=error_responses(400, 401, 403, 413, 422, 429))
async def upload_dsl(body: DSLUpload, grammars: GrammarsDep, settings: SettingsDep, caller: CallerDep) -> DSLInfo:
    """Register a grammar for the caller's tenant (an admin's is shared). 400 with the line and column when it
    does not compile (lark or the engine), is unbounded, or does not compile within the time and memory a
    compile may use."""
    grammar = await upload(grammars, settings, owner=caller.tenant, name=body.name, text=body.grammar,
                           start=body.start, description=body.description,
                           examples=[Example(e.text, e.code) for e in body.examples])
    return _info(grammar, caller, grammars)


@router.delete("/dsls/{name}", status_code=204, response_class=Response,
               responses=error_responses(401, 404, 413))
async def delete_dsl(name: str, grammars: GrammarsDep, caller: CallerDep) -> Response:
    """Remove one of the caller's uploaded grammars."""
    grammars.remove_upload(name, owner=caller.tenant)
    return Response(status_code=204)
