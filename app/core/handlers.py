"""Exception handlers: every error leaves as `{"detail", "code"}`, never a stack trace."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.core.errors import AppError, DatabaseUnavailable, InternalError

log = logging.getLogger("app.errors")

_HTTP_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


async def app_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


async def validation_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_clean(e) for e in exc.errors()]
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    summary = f"{where}: {first.get('msg', 'invalid value')}" if where else "Invalid request."
    return JSONResponse(
        {"detail": summary, "code": "validation_error", "errors": errors}, status_code=422
    )


def _clean(error: dict[str, Any]) -> dict[str, Any]:
    # The raw input and pydantic's context may hold unserialisable or sensitive values.
    cleaned = {k: v for k, v in error.items() if k in ("loc", "msg", "type")}
    encoded: dict[str, Any] = jsonable_encoder(cleaned)
    return encoded


_BODY_NOT_PARSED = "There was an error parsing the body"


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == _BODY_NOT_PARSED:
        # A body that is not even text (bytes that are not UTF-8): the same 422 as bad JSON,
        # which every route declares.
        error = {"loc": ["body"], "msg": "The body could not be parsed.", "type": "json_invalid"}
        return JSONResponse(
            {"detail": "body: could not be parsed", "code": "validation_error", "errors": [error]},
            status_code=422,
        )
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else "Request failed."
    if exc.status_code == 404 and detail == "Not Found":
        detail = "No such endpoint; see /docs."
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names the methods of the first route that matched the path only.
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return JSONResponse(
        {"detail": detail, "code": code}, status_code=exc.status_code, headers=headers
    )


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "__none__"})
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


async def database_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    # Also the pool's TimeoutError: every pooled connection busy for the pool's timeout.
    log.error("database unavailable: %s", type(exc).__name__)
    error = DatabaseUnavailable()
    return JSONResponse(error.body(), status_code=error.status_code, headers={"Retry-After": "5"})


async def unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(InternalError().body(), status_code=InternalError.status_code)


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, app_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(OperationalError, database_error_handler)
    app.add_exception_handler(PoolTimeout, database_error_handler)
    app.add_exception_handler(Exception, unhandled_error_handler)
