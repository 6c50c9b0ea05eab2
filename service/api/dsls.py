"""``GET /dsls``: the DSLs the service generates, with their grammars and example requests."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from service.api.deps import ServicesDep
from service.api.schemas import ERROR_RESPONSES
from service.grammars import Grammar

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


def _info(grammar: Grammar, tenants: list[str]) -> DSLInfo:
    return DSLInfo(
        name=grammar.name,
        description=grammar.description,
        grammar=grammar.text,
        examples=[vars(ex) for ex in grammar.examples[:3]],
        operations=[op.full_name for op in grammar.catalog.operations] if grammar.catalog else None,
        tenant=grammar.tenant,
        tenants=tenants,
    )


@router.get("/dsls", response_model=list[DSLInfo])
async def list_dsls(services: ServicesDep) -> list[DSLInfo]:
    """List the DSLs."""
    return [_info(g, services.grammars.tenants(g.name)) for g in services.grammars]


@router.get("/dsls/{name}", response_model=DSLInfo, responses=ERROR_RESPONSES)
async def get_dsl(name: str, services: ServicesDep, tenant: str | None = None) -> DSLInfo:
    """One DSL with its full grammar (a tenant's variant with ``?tenant=``)."""
    grammar = services.grammars.get(name, tenant=tenant)
    return _info(grammar, services.grammars.tenants(name))
