"""Probes and metrics: ``/healthz`` (process alive), ``/readyz`` (engine loaded), ``/metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import BaseModel

from service.api.deps import ServicesDep
from service.api.schemas import ERROR_RESPONSES

__all__ = ["router"]

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    model: str
    engine: str


def _engine_state(services) -> str:
    if services.engine_error:
        return "failed"
    if services.engine is None:
        return "loading"
    return "running" if services.engine.ready else "dead"


@router.get("/healthz", response_model=Health, responses={503: ERROR_RESPONSES[503]})
async def healthz(services: ServicesDep) -> Health:
    """Alive: answers while the model loads; fails only when the engine has failed or died."""
    state = _engine_state(services)
    if state in ("failed", "dead"):
        services.ready_engine()  # raises the 503 with the reason
    return Health(status="ok", model=services.model, engine=state)


@router.get("/readyz", response_model=Health, responses={503: ERROR_RESPONSES[503]})
async def readyz(services: ServicesDep) -> Health:
    """Ready: the engine is loaded and takes requests."""
    services.ready_engine()
    return Health(status="ready", model=services.model, engine="running")


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def prometheus_metrics() -> Response:
    """Prometheus metrics: ``nl2dsl_*`` and the engine's ``vllm:*``."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
