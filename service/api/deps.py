"""What a handler can ask for: the services built by the lifespan, as ``Annotated`` dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from service.adapters import AdapterRegistry
from service.config import Settings
from service.engine import Engine
from service.errors import EngineUnavailable
from service.grammars import GrammarRegistry
from service.limits import Admission
from service.retrieval import Retriever
from service.safety import SafetyChecker
from service.security import DEVELOPER, KeyStore, Principal

__all__ = ["EngineDep", "PrincipalDep", "Services", "ServicesDep", "SettingsDep"]


@dataclass
class Services:
    """Everything the request path needs, built once at start-up and kept on ``app.state.services``."""

    settings: Settings
    grammars: GrammarRegistry
    adapters: AdapterRegistry
    tokenizer: Any
    model: str
    retriever: Retriever
    keys: KeyStore
    admission: Admission
    safety: SafetyChecker
    engine: Engine | None = None
    #: Why the engine is not there (start-up failed); None while loading or when running.
    engine_error: str | None = None

    def ready_engine(self) -> Engine:
        """The engine if it can take requests now; EngineUnavailable (503) otherwise."""
        if self.engine is None:
            reason = self.engine_error or "the engine is still loading"
            raise EngineUnavailable(f"not ready: {reason}")
        if not self.engine.ready:
            raise EngineUnavailable("not ready: the engine has stopped")
        return self.engine


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_principal(request: Request) -> Principal:
    """The caller: from its API key (401 without a valid one), or the developer when auth is off."""
    services = get_services(request)
    if services.settings.auth == "off":
        return DEVELOPER
    return services.keys.authenticate(request)


def get_engine(request: Request) -> Engine:
    return get_services(request).ready_engine()


def get_settings(request: Request) -> Settings:
    return get_services(request).settings


ServicesDep = Annotated[Services, Depends(get_services)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
