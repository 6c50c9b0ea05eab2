"""What a handler can ask for, as ``Annotated`` dependencies: the caller, and the pieces the lifespan built.

The caller is resolved once, by :class:`service.api.auth.AuthMiddleware`, from the API key and before the
body is read; ``CallerDep`` hands it down. A route the middleware did not authenticate gets no caller: 401,
never a default.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.adapters import AdapterPublisher, AdapterRegistry
from service.api.generate.serving import GenerateServing
from service.api.upload_body import UploadBodies
from service.config import Settings
from service.engine import EngineSlot
from service.errors import Unauthorized
from service.grammars import GrammarRegistry
from service.grammars.uploads import DSLPublisher
from service.onboarding.jobs import OnboardingJobs
from service.security import Caller

__all__ = ["AdapterPublisherDep", "AdaptersDep", "CallerDep", "DSLPublisherDep", "EngineSlotDep", "GrammarsDep",
           "OnboardingJobsDep", "ServingDep", "SettingsDep", "UploadBodiesDep"]


def get_caller(request: Request) -> Caller:
    caller = getattr(request.state, "caller", None)
    if caller is None:
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'",
                           headers={"WWW-Authenticate": "Bearer"})
    return caller


def _state(name: str):
    def get(request: Request):
        return getattr(request.app.state, name)

    return get


CallerDep = Annotated[Caller, Depends(get_caller)]
SettingsDep = Annotated[Settings, Depends(_state("settings"))]
GrammarsDep = Annotated[GrammarRegistry, Depends(_state("grammars"))]
AdaptersDep = Annotated[AdapterRegistry, Depends(_state("adapters"))]
EngineSlotDep = Annotated[EngineSlot, Depends(_state("engine_slot"))]
ServingDep = Annotated[GenerateServing, Depends(_state("serving"))]
DSLPublisherDep = Annotated[DSLPublisher, Depends(_state("dsl_publisher"))]
AdapterPublisherDep = Annotated[AdapterPublisher, Depends(_state("adapter_publisher"))]
OnboardingJobsDep = Annotated[OnboardingJobs, Depends(_state("onboarding_jobs"))]
UploadBodiesDep = Annotated[UploadBodies, Depends(_state("upload_bodies"))]
