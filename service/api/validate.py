"""``POST /validate``: does this code parse with the DSL's grammar, and if not, where does it stop?"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import PrincipalDep, ServicesDep
from service.api.schemas import ERROR_RESPONSES, ParseErrorModel

__all__ = ["ValidateRequest", "ValidateResponse", "router"]

router = APIRouter(tags=["validate"])


class ValidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dsl: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    code: str = Field(max_length=20_000)
    tenant: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                               description="Validate with this tenant's variant of the DSL.")


class ValidateResponse(BaseModel):
    valid: bool
    dsl: str
    error: ParseErrorModel | None = None
    tree: str | None = Field(default=None, description="The lark parse tree, indented, when the code parses.")


@router.post("/validate", response_model=ValidateResponse, responses=ERROR_RESPONSES)
async def validate_code(body: ValidateRequest, services: ServicesDep, principal: PrincipalDep) -> ValidateResponse:
    """Parse code with the DSL's grammar (the same parser that marks generated code valid)."""
    principal.check_dsl(body.dsl)
    result = services.grammars.get(body.dsl, tenant=principal.tenant_for(body.tenant)).parse(body.code)
    error = ParseErrorModel(**vars(result.error)) if result.error else None
    tree = result.tree.pretty() if result.tree is not None else None
    return ValidateResponse(valid=result.valid, dsl=body.dsl, error=error, tree=tree)
