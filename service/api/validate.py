"""``POST /validate``: does this code parse with the DSL's grammar, and if not, where does it stop?"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import CallerDep, GrammarsDep
from service.api.schemas import ParseErrorModel, error_responses
from service.names import NAME_PATTERN

__all__ = ["ValidateRequest", "ValidateResponse", "router"]

router = APIRouter(tags=["validate"])


class ValidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dsl: str = Field(pattern=NAME_PATTERN)
    code: str = Field(max_length=20_000)
    tenant: str | None = Field(default=None, pattern=NAME_PATTERN,
                               description="Validate with this tenant's variant of the DSL.")


class ValidateResponse(BaseModel):
    valid: bool
    dsl: str
    error: ParseErrorModel | None = None
    tree: str | None = Field(default=None, description="The lark parse tree, indented, when the code parses.")


@router.post("/validate", response_model=ValidateResponse, responses=error_responses(400, 401, 403, 404, 413, 422,
                                                                                       429))
async def validate_code(body: ValidateRequest, grammars: GrammarsDep, caller: CallerDep) -> ValidateResponse:
    """Parse code with the DSL's grammar (the same parser that marks generated code valid). 400 `parse_limit`
    when the parse needs more time or memory than a parse may use."""
    caller.check_dsl(body.dsl)
    tenant = caller.tenant_for(body.tenant)
    result = await grammars.parse(await grammars.resolve(body.dsl, tenant=tenant), body.code, owner=tenant)
    error = ParseErrorModel(**vars(result.error)) if result.error else None
    tree = result.tree.pretty() if result.tree is not None else None
    return ValidateResponse(valid=result.valid, dsl=body.dsl, error=error, tree=tree)
