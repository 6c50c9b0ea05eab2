"""One exception handler per error family, all rendering the one error shape (:func:`service.errors.error_body`)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from service.errors import NL2DSLError, error_body

__all__ = ["error_response", "install_error_handlers"]

log = logging.getLogger("nl2dsl.errors")

_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden",
               408: "body_timeout", 413: "payload_too_large"}


def error_response(exc: NL2DSLError) -> JSONResponse:
    """The one error shape for ``exc`` (also what the middlewares answer before a route runs)."""
    return JSONResponse(error_body(exc.type, exc.message, exc.detail, status=exc.status_code),
                        status_code=exc.status_code, headers=exc.headers)


async def _nl2dsl_error(request: Request, exc: NL2DSLError) -> JSONResponse:
    return error_response(exc)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    fields = [_field(err) for err in exc.errors()]
    message = "; ".join(f"{f['field'] or 'body'}: {f['message']}" for f in fields) or "invalid request"
    return JSONResponse(error_body("invalid_request", message, fields, status=422), status_code=422)


def _field(err: dict) -> dict[str, str]:
    """One validation error as ``{"field", "message"}``. A body that is not JSON names no field: its location
    is the character where decoding stopped (FastAPI puts that number where a field name would be)."""
    location = [p for p in err.get("loc", ()) if p != "body"]
    message = err.get("msg", "")
    if err.get("type") == "json_invalid":
        where = f" at character {location[0]}" if location else ""
        return {"field": "", "message": f"{message}{where} of the body"}
    return {"field": ".".join(str(p) for p in location), "message": message}


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    return JSONResponse(error_body(type_, str(exc.detail), None, status=exc.status_code), status_code=exc.status_code,
                        headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """The methods of the path's most specific route template (Starlette's own 405 names only the first
    route's): ``/adapters/reload`` is that path, not ``/adapters/{name}`` with the name "reload"."""
    by_template: dict[str, set[str]] = {}
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE and getattr(route, "methods", None):
            by_template.setdefault(route.path, set()).update(route.methods)
    if not by_template:
        return []
    return sorted(by_template[min(by_template, key=lambda template: template.count("{"))])


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body("internal_error", "internal error", None, status=500), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Every error the API returns goes through one of these, so clients parse one shape."""
    app.add_exception_handler(NL2DSLError, _nl2dsl_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
