"""``/adapters``: the LoRA adapters a caller may use, the tenants and DSL each serves, and why one cannot be served.

A tenant sees its own and the shared adapters (the one access rule of :mod:`service.adapters`); admins see
all. ``POST /adapters/reload`` (admin) rescans the adapters folder, so new or updated adapters are served
without a restart.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from service.adapters import Adapter
from service.api.deps import AdaptersDep, CallerDep
from service.api.schemas import error_responses

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


@router.get("/adapters", response_model=list[AdapterInfo], responses=error_responses(401, 413))
async def list_adapters(adapters: AdaptersDep, caller: CallerDep) -> list[AdapterInfo]:
    """List the adapters the caller may use (also those that cannot be served, with the reason)."""
    return [_info(a) for a in adapters.usable(caller)]


@router.post("/adapters/reload", response_model=list[AdapterInfo], responses=error_responses(401, 403, 413))
async def reload_adapters(adapters: AdaptersDep, caller: CallerDep) -> list[AdapterInfo]:
    """Admin: rescan the adapters folder (new, changed and removed adapters) without a restart."""
    caller.require_admin()
    await adapters.reload()
    return [_info(a) for a in adapters.all()]
