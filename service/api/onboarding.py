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
from pydantic import Field

from service.api.deps import CallerDep, GrammarsDep, OnboardingJobsDep, SettingsDep
from service.api.schemas import error_responses
from service.errors import RequestInvalid
from service.grammars import DecodingLimits
from service.grammars.uploads import grammar_size_problem
from service.names import DSL_NAME_PATTERN
from service.onboarding.options import OnboardOptions
from service.security import presented_key

__all__ = ["OnboardingStart", "router"]

router = APIRouter(tags=["onboarding"])

JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]
_REPORTS = {"md": ("ONBOARDING.md", "text/markdown"), "png": ("ONBOARDING.png", "image/png"),
            "json": ("ONBOARDING.json", "application/json")}


class OnboardingStart(OnboardOptions):
    """A team's grammar and pairs, and how the run goes (``tenant``: an admin's run for that tenant)."""

    name: str = Field(pattern=DSL_NAME_PATTERN, description="The DSL's and the adapter's name.")
    grammar: str = Field(min_length=1, max_length=100_000, description="Lark grammar text, as written.")
    pairs: str = Field(min_length=1, description='JSONL, one {"text", "code", "context"?} per line.')


@router.post("/onboarding", status_code=202, responses=error_responses(400, 401, 403, 409, 413, 422, 429))
async def start_onboarding(body: OnboardingStart, request: Request, jobs: OnboardingJobsDep, caller: CallerDep,
                           settings: SettingsDep, grammars: GrammarsDep) -> dict[str, Any]:
    """Start onboarding a DSL: dataset, baseline, adapter, gate, publish, report (409 while a run is going).
    The grammar is compiled in the grammar sandbox first, as ``POST /dsls`` does: one it refuses is a 400 here."""
    if body.budget_s > settings.onboarding_max_budget_s:
        raise RequestInvalid(f"budget_s may be at most {settings.onboarding_max_budget_s:.0f} s on this service",
                             detail={"max_budget_s": settings.onboarding_max_budget_s})
    if body.pairs.count("\n") + 1 > settings.onboarding_max_pairs:
        raise RequestInvalid(f"at most {settings.onboarding_max_pairs} pairs per run",
                             detail=[{"field": "pairs", "message": "too many lines"}])
    if problem := grammar_size_problem(body.grammar, settings):
        raise RequestInvalid(problem, detail=[{"field": "grammar", "message": "too long"}])
    tenant = caller.tenant_for(body.tenant)
    await grammars.sandbox.compile(body.grammar, start=body.start, source=f"<{body.name}>", limits=DecodingLimits(),
                                   owner=tenant)
    options = OnboardOptions(**{**body.model_dump(include=set(OnboardOptions.model_fields)), "tenant": tenant})
    return await asyncio.to_thread(jobs.start, body.name, body.grammar, body.pairs, options, caller=caller,
                                   api_key=presented_key(request.headers))


@router.get("/onboarding/{job_id}", responses=error_responses(401, 404, 413, 422))
async def onboarding_status(job_id: JobId, jobs: OnboardingJobsDep, caller: CallerDep) -> dict[str, Any]:
    """The run's state, stage, training progress, scores so far, verdict and last log lines."""
    return await asyncio.to_thread(jobs.status, job_id, caller)


@router.get("/onboarding/{job_id}/report.{kind}", responses=error_responses(401, 404, 413, 422))
async def onboarding_report(job_id: JobId, kind: Annotated[str, Path(pattern="^(md|png|json)$")],
                            jobs: OnboardingJobsDep, caller: CallerDep) -> FileResponse:
    """The report of a run that has ended: Markdown, the PNG chart, or every number as JSON."""
    filename, media_type = _REPORTS[kind]
    path = await asyncio.to_thread(jobs.report, job_id, filename, caller)
    return FileResponse(path, media_type=media_type)


@router.delete("/onboarding/{job_id}", status_code=204, responses=error_responses(401, 404, 413, 422))
async def cancel_onboarding(job_id: JobId, jobs: OnboardingJobsDep, caller: CallerDep) -> Response:
    """Stop the run (nothing it has not yet published is published)."""
    await asyncio.to_thread(jobs.cancel, job_id, caller)
    return Response(status_code=204)
