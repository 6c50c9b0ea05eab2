"""``/adapters``: the LoRA adapters a caller may use, the tenants and DSL each serves, and why one cannot be served.

A tenant sees its own and the shared adapters (the one access rule of :mod:`service.adapters`); admins see
all. ``POST /adapters`` publishes an adapter (the PEFT folder as a .tar.gz) as the next version in the store
every replica reads; ``/versions``, ``/rollback`` and ``DELETE`` go through a published adapter's history.
``POST /adapters/reload`` (admin) rescans the shipped adapters folder.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel

from service.adapters import Adapter
from service.api.deps import AdapterPublisherDep, AdaptersDep, CallerDep, SettingsDep, UploadBodiesDep
from service.api.schemas import Rollback, VersionInfo, error_responses, version_info
from service.names import NAME_PATTERN

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
    #: Published at run time: the version served (None: shipped with the service).
    version: int | None = None


#: A published adapter named in the path: a name no adapter can have is a 422, before the store is asked.
AdapterName = Annotated[str, Path(pattern=NAME_PATTERN)]


def _info(adapter: Adapter) -> AdapterInfo:
    return AdapterInfo(
        name=adapter.name,
        dsl=adapter.dsl,
        tenants=list(adapter.tenants),
        rank=adapter.rank,
        base_model=adapter.base_model,
        available=adapter.error is None,
        error=adapter.error,
        version=adapter.version,
    )


@router.get("/adapters", response_model=list[AdapterInfo], responses=error_responses(401, 413))
async def list_adapters(adapters: AdaptersDep, caller: CallerDep) -> list[AdapterInfo]:
    """List the adapters the caller may use (also those that cannot be served, with the reason)."""
    return [_info(a) for a in adapters.usable(caller)]


@router.post("/adapters", status_code=201, response_model=AdapterInfo,
             responses=error_responses(400, 401, 403, 408, 413, 429, 503),
             openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {
                 "schema": {"type": "string", "format": "binary"}}}}})
async def publish_adapter(request: Request, publisher: AdapterPublisherDep, caller: CallerDep,
                          bodies: UploadBodiesDep, settings: SettingsDep, name: str | None = None) -> AdapterInfo:
    """Publish a LoRA adapter: the PEFT folder (manifest.yaml, adapter_config.json, adapter_model.safetensors)
    as a .tar.gz body, checked (base model, rank, files, size) and served by every replica. A tenant's
    serves that tenant only; an admin's is shared. ``name`` overrides the manifest's."""
    archive = await bodies.read(request, owner=caller.tenant, limit=settings.max_adapter_bytes)
    return _info(await publisher.publish(owner=caller.tenant, archive=archive, name=name))


@router.get("/adapters/{name}/versions", response_model=list[VersionInfo],
            responses=error_responses(401, 404, 413, 422, 503))
async def list_adapter_versions(name: AdapterName, publisher: AdapterPublisherDep,
                                caller: CallerDep) -> list[VersionInfo]:
    """The versions of one of the caller's published adapters, oldest first (the newest is served)."""
    return [version_info(v) for v in await publisher.history(owner=caller.tenant, name=name)]


@router.post("/adapters/{name}/rollback", response_model=AdapterInfo,
             responses=error_responses(400, 401, 404, 413, 422, 429, 503))
async def rollback_adapter(name: AdapterName, body: Rollback, publisher: AdapterPublisherDep,
                           caller: CallerDep) -> AdapterInfo:
    """Serve an earlier version again: its content is published as the newest version, on every replica."""
    return _info(await publisher.rollback(owner=caller.tenant, name=name, version=body.version))


@router.delete("/adapters/{name}", status_code=204, response_class=Response,
               responses=error_responses(401, 404, 413, 422, 503))
async def delete_adapter(name: AdapterName, publisher: AdapterPublisherDep, caller: CallerDep) -> Response:
    """Withdraw one of the caller's published adapters on every replica (its versions stay for a rollback)."""
    await publisher.delete(owner=caller.tenant, name=name)
    return Response(status_code=204)


@router.post("/adapters/reload", response_model=list[AdapterInfo], responses=error_responses(401, 403, 413))
async def reload_adapters(adapters: AdaptersDep, caller: CallerDep) -> list[AdapterInfo]:
    """Admin: rescan the shipped adapters folder (new, changed and removed adapters) without a restart."""
    caller.require_admin()
    await adapters.reload()
    return [_info(a) for a in adapters.all()]
