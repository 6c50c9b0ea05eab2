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


def _info(grammar: Grammar) -> DSLInfo:
    return DSLInfo(
        name=grammar.name,
        description=grammar.description,
        grammar=grammar.text,
        examples=[vars(ex) for ex in grammar.examples[:3]],
        operations=[op.full_name for op in grammar.catalog.operations] if grammar.catalog else None,
    )


@router.get("/dsls", response_model=list[DSLInfo])
async def list_dsls(services: ServicesDep) -> list[DSLInfo]:
    """List the DSLs."""
    return [_info(g) for g in services.grammars]


@router.get("/dsls/{name}", response_model=DSLInfo, responses=ERROR_RESPONSES)
async def get_dsl(name: str, services: ServicesDep) -> DSLInfo:
    """One DSL with its full grammar."""
    return _info(services.grammars.get(name))
