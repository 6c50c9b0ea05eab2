"""``/onboarding``: start ``nl2dsl onboard`` from the API (the playground's onboarding view) and follow it.

``POST /onboarding`` takes the grammar and the pairs (JSONL) and answers 202 with the run's status;
``GET /onboarding/{id}`` is the status (stage, training step and held-out score, the scores so far, the
verdict, the log's last lines); ``GET /onboarding/{id}/report.{md,png,json}`` the report once written;
``DELETE /onboarding/{id}`` stops the run. A run is the caller's: another tenant gets 404.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import CallerDep, OnboardingJobsDep, SettingsDep
from service.api.schemas import error_responses
from service.errors import RequestInvalid
from service.names import DSL_NAME_PATTERN
from service.security import presented_key

__all__ = ["OnboardingStart", "router"]

router = APIRouter(tags=["onboarding"])

JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]
_REPORTS = {"md": ("ONBOARDING.md", "text/markdown"), "png": ("ONBOARDING.png", "image/png"),
            "json": ("ONBOARDING.json", "application/json")}


class OnboardingStart(BaseModel):
    """A team's grammar and pairs, and how long the run may take."""

    # Strict: `"examples": false` or `"steps": "2"` is a client's mistake, not a number to guess at.
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=DSL_NAME_PATTERN, description="The DSL's and the adapter's name.")
    grammar: str = Field(min_length=1, max_length=100_000, description="Lark grammar text, as written.")
    pairs: str = Field(min_length=1, description='JSONL, one {"text", "code", "context"?} per line.')
    tenant: str | None = Field(default=None, description="An admin's run for this tenant.")
    start: str = Field(default="start", pattern=r"^[a-z_][a-z0-9_]{0,31}$")
    description: str = Field(default="", max_length=500)
    budget_s: float = Field(default=1800, ge=60, description="Wall-clock seconds for the whole run.")
    margin: float = Field(default=0.05, ge=-1, le=1,
                          description="Held-out exact match the adapter must add over the best baseline.")
    examples: int = Field(default=3, ge=0, le=8)
    heldout: int = Field(default=100, ge=4, le=500)
    max_tokens: int = Field(default=64, ge=1, le=512)
    steps: int | None = Field(default=None, ge=1, le=5000, description="Fixed steps instead of the budget's.")


@router.post("/onboarding", status_code=202, responses=error_responses(400, 401, 403, 409, 413, 422))
async def start_onboarding(body: OnboardingStart, request: Request, jobs: OnboardingJobsDep, caller: CallerDep,
                           settings: SettingsDep) -> dict[str, Any]:
    """Start onboarding a DSL: dataset, baseline, adapter, gate, publish, report (409 while a run is going)."""
    if body.budget_s > settings.onboarding_max_budget_s:
        raise RequestInvalid(f"budget_s may be at most {settings.onboarding_max_budget_s:.0f} s on this service",
                             detail={"max_budget_s": settings.onboarding_max_budget_s})
    tenant = caller.tenant_for(body.tenant)
    key = presented_key(request.headers)
    options = body.model_dump(exclude={"name", "grammar", "pairs", "tenant"})
    return await asyncio.to_thread(jobs.start, body.name, body.grammar, body.pairs, options, tenant=tenant,
                                   api_key=key)


@router.get("/onboarding/{job_id}", responses=error_responses(401, 404, 413, 422))
async def onboarding_status(job_id: JobId, jobs: OnboardingJobsDep, caller: CallerDep) -> dict[str, Any]:
    """The run's state, stage, training progress, scores so far, verdict and last log lines."""
    return await asyncio.to_thread(jobs.status, job_id, tenant=caller.tenant, admin=caller.admin)


@router.get("/onboarding/{job_id}/report.{kind}", responses=error_responses(401, 404, 413, 422))
async def onboarding_report(job_id: JobId, kind: Annotated[str, Path(pattern="^(md|png|json)$")],
                            jobs: OnboardingJobsDep, caller: CallerDep) -> FileResponse:
    """The report of a run that has ended: Markdown, the PNG chart, or every number as JSON."""
    filename, media_type = _REPORTS[kind]
    path = await asyncio.to_thread(jobs.report, job_id, filename, tenant=caller.tenant, admin=caller.admin)
    return FileResponse(path, media_type=media_type)


@router.delete("/onboarding/{job_id}", status_code=204, responses=error_responses(401, 404, 413, 422))
async def cancel_onboarding(job_id: JobId, jobs: OnboardingJobsDep, caller: CallerDep) -> Response:
    """Stop the run (nothing it has not yet published is published)."""
    await asyncio.to_thread(jobs.cancel, job_id, tenant=caller.tenant, admin=caller.admin)
    return Response(status_code=204)
