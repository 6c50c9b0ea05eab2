"""``GET /adapters``: the LoRA adapters, which tenants and DSL each serves, and why one cannot be served."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from service.adapters import Adapter
from service.api.deps import ServicesDep

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


@router.get("/adapters", response_model=list[AdapterInfo])
async def list_adapters(services: ServicesDep) -> list[AdapterInfo]:
    """List the registered adapters (also those that cannot be served, with the reason)."""
    return [_info(a) for a in services.adapters.all()]
