"""``/adapters``: the LoRA adapters, which tenants and DSL each serves, and why one cannot be served.

A tenant sees its own and the shared adapters; ``POST /adapters/reload`` (admin) rescans the adapters
folder, so new or updated adapters are served without a restart.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from service.adapters import Adapter, AdapterRegistry
from service.api.deps import PrincipalDep, ServicesDep
from service.api.schemas import ERROR_RESPONSES

__all__ = ["AdapterInfo", "router"]

router = APIRouter(tags=["adapters"])


class AdapterInfo(BaseModel):
    name: str
    dsl: str | None
    tenants: list[str]
    rank: int | None
    base_model: dict[str, Any]
    available: bool
    error: str | None = None


def _info(adapter: Adapter) -> AdapterInfo:
    return AdapterInfo(
        name=adapter.name,
        dsl=adapter.dsl,
        tenants=list(adapter.tenants),
        rank=adapter.rank,
        base_model=adapter.base_model,
        available=adapter.error is None,
        error=adapter.error,
    )


@router.get("/adapters", response_model=list[AdapterInfo], responses=ERROR_RESPONSES)
async def list_adapters(services: ServicesDep, principal: PrincipalDep) -> list[AdapterInfo]:
    """List the adapters the caller may use (also those that cannot be served, with the reason)."""
    return [_info(a) for a in services.adapters.all()
            if principal.admin or a.shared or principal.tenant in a.tenants]


@router.post("/adapters/reload", response_model=list[AdapterInfo], responses=ERROR_RESPONSES)
async def reload_adapters(services: ServicesDep, principal: PrincipalDep) -> list[AdapterInfo]:
    """Admin: rescan the adapters folder (new, changed and removed adapters) without a restart."""
    principal.require_admin()
    current = services.adapters
    services.adapters = AdapterRegistry(current.directory, base_fingerprint=current.base_fingerprint,
                                        max_rank=current.max_rank).load()
    return [_info(a) for a in services.adapters.all()]
