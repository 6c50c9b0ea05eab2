"""``/dsls``: the DSLs the service generates (shipped, and grammars tenants upload at run time).

``GET /dsls`` lists the shipped DSLs the caller may use and its own uploads; ``POST /dsls`` registers a Lark
grammar for the caller's tenant (an admin's upload is shared), bounded in size and compile time;
``DELETE /dsls/{name}`` removes an upload.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from service import grammar_sandbox
from service.api.deps import PrincipalDep, ServicesDep
from service.api.schemas import ERROR_RESPONSES
from service.errors import Forbidden, RateLimited, RequestInvalid
from service.grammars import Example, Grammar

__all__ = ["DSLInfo", "router"]

router = APIRouter(tags=["dsls"])


class DSLInfo(BaseModel):
    name: str
    description: str
    grammar: str
    examples: list[dict[str, str | None]]
    operations: list[str] | None = None
    tenant: str | None = None
    #: Tenants with a private variant of this DSL (their own connectors): ``GET /dsls/{name}?tenant=...``.
    tenants: list[str] = []
    #: "shipped", "tenant" or "upload".
    origin: str = "shipped"


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


def _info(grammar: Grammar, tenants: list[str]) -> DSLInfo:
    return DSLInfo(
        name=grammar.name,
        description=grammar.description,
        grammar=grammar.text,
        examples=[vars(ex) for ex in grammar.examples[:3]],
        operations=[op.full_name for op in grammar.catalog.operations] if grammar.catalog else None,
        tenant=grammar.tenant,
        tenants=tenants,
        origin=grammar.origin,
    )


@router.get("/dsls", response_model=list[DSLInfo], responses=ERROR_RESPONSES)
async def list_dsls(services: ServicesDep, principal: PrincipalDep) -> list[DSLInfo]:
    """List the DSLs the caller may use: shipped ones, shared uploads and its own uploads."""
    shipped = [_info(g, services.grammars.tenants(g.name)) for g in services.grammars
               if principal.admin or principal.dsls is None or g.name in principal.dsls]
    uploads = services.grammars.uploaded(None)
    if principal.tenant is not None:
        uploads += services.grammars.uploaded(principal.tenant)
    return shipped + [_info(g, []) for g in uploads]


@router.get("/dsls/{name}", response_model=DSLInfo, responses=ERROR_RESPONSES)
async def get_dsl(name: str, services: ServicesDep, principal: PrincipalDep, tenant: str | None = None) -> DSLInfo:
    """One DSL with its full grammar (a tenant's variant with ``?tenant=``)."""
    principal.check_dsl(name)
    grammar = services.grammars.get(name, tenant=principal.tenant_for(tenant))
    return _info(grammar, services.grammars.tenants(name))


@router.post("/dsls", status_code=201, response_model=DSLInfo, responses=ERROR_RESPONSES)
async def upload_dsl(body: DSLUpload, services: ServicesDep, principal: PrincipalDep) -> DSLInfo:
    """Register a grammar for the caller's tenant (an admin's is shared). 400 with lark's line and column
    when it does not compile, or when it is unbounded or does not compile in time."""
    settings = services.settings
    owner = principal.tenant
    if body.name in services.grammars.names():
        raise Forbidden(f"{body.name!r} is a shipped DSL; choose another name", detail={"name": body.name})
    if len(body.grammar) > settings.max_grammar_chars:
        raise RequestInvalid(f"the grammar has {len(body.grammar)} characters; the limit is "
                             f"{settings.max_grammar_chars}", detail=[{"field": "grammar", "message": "too long"}])
    existing = {g.name for g in services.grammars.uploaded(owner)}
    if body.name not in existing and len(existing) >= settings.max_grammars_per_tenant:
        raise RateLimited(f"at most {settings.max_grammars_per_tenant} uploaded grammars per tenant; delete one "
                          "first", detail={"limit": "grammars", "max": settings.max_grammars_per_tenant})
    grammar = await grammar_sandbox.compile_upload(
        body.name, body.grammar, start=body.start, timeout_s=settings.grammar_compile_timeout_s,
        description=body.description, examples=tuple(Example(e.text, e.code) for e in body.examples),
    )
    bad = [i for i, e in enumerate(body.examples) if not grammar.parse(e.code).valid]
    if bad:
        raise RequestInvalid(f"examples {bad} do not parse with the grammar",
                             detail=[{"field": f"examples.{i}.code", "message": "does not parse"} for i in bad])
    services.grammars.add_upload(grammar, owner=owner)
    return _info(grammar, [])


@router.delete("/dsls/{name}", status_code=204, response_class=Response, responses=ERROR_RESPONSES)
async def delete_dsl(name: str, services: ServicesDep, principal: PrincipalDep) -> Response:
    """Remove one of the caller's uploaded grammars."""
    services.grammars.remove_upload(name, owner=principal.tenant)
    return Response(status_code=204)
