"""Probes and metrics: ``/healthz`` (process alive), ``/readyz`` (engine loaded), ``/metrics`` (Prometheus).

``/metrics`` is served here only in development (auth off, no ``NL2DSL_METRICS_PORT``) or when
``NL2DSL_METRICS_ON_API`` says so; otherwise Prometheus scrapes ``NL2DSL_METRICS_PORT`` and the API port does
not expose the metrics (``Settings.serves_metrics_on_api``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import BaseModel

from service.api.deps import EngineSlotDep
from service.api.schemas import error_responses

__all__ = ["metrics_router", "router"]

router = APIRouter(tags=["health"])
metrics_router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    model: str
    engine: str


@router.get("/healthz", response_model=Health, responses=error_responses(503))
async def healthz(engine: EngineSlotDep) -> Health:
    """Alive: answers while the model loads; fails only when the engine has failed or died."""
    if engine.state in ("failed", "dead"):
        engine.ready()  # raises the 503 with the reason
    return Health(status="ok", model=Path(engine.model).name, engine=engine.state)


@router.get("/readyz", response_model=Health, responses=error_responses(503))
async def readyz(engine: EngineSlotDep) -> Health:
    """Ready: the engine is loaded and takes requests."""
    engine.ready()
    return Health(status="ready", model=Path(engine.model).name, engine="running")


@metrics_router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def prometheus_metrics() -> Response:
    """Prometheus metrics: ``nl2dsl_*`` and the engine's ``vllm:*``."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
