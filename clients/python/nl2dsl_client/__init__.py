"""nl2dsl-client: a typed client of the nl2dsl service, sync and async, with retries; httpx and pydantic only.

    from nl2dsl_client import NL2DSLClient

    with NL2DSLClient("http://127.0.0.1:8000", api_key="...") as client:
        print(client.generate(dsl="flow", text="when a form is submitted, post the answers to #sales").code)
"""

from nl2dsl_client._client import AsyncNL2DSLClient, NL2DSLClient
from nl2dsl_client._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    GenerationTimeoutError,
    NL2DSLError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
)
from nl2dsl_client._models import (
    DSL,
    Adapter,
    Candidate,
    GenerateResult,
    ParseError,
    Timings,
    Usage,
    ValidationResult,
)
from nl2dsl_client._retry import RetryPolicy
from nl2dsl_client._streaming import AsyncStream, Stream

__version__ = "0.1.0"

__all__ = [
    "DSL",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "Adapter",
    "AsyncNL2DSLClient",
    "AsyncStream",
    "AuthenticationError",
    "BadRequestError",
    "Candidate",
    "ConflictError",
    "GenerateResult",
    "GenerationTimeoutError",
    "NL2DSLClient",
    "NL2DSLError",
    "NotFoundError",
    "ParseError",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryPolicy",
    "ServiceUnavailableError",
    "Stream",
    "Timings",
    "UnprocessableEntityError",
    "Usage",
    "ValidationResult",
]
