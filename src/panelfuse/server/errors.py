"""Errors in OpenAI's shape ({"error": {"message", "type", "param", "code"}}) with the right status."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from panelfuse.service.errors import ServiceError, from_provider_error

__all__ = ["ApiError", "ServiceError", "error_response", "from_provider_error"]


class ApiError(ServiceError):
    """A ServiceError raised by the HTTP layer itself."""

    def response(self) -> JSONResponse:
        return error_response(self)


def error_response(exc: ServiceError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


async def validation_handler(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = _loc(tuple(first.get("loc", ())))
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the body is not valid JSON: {first.get('msg')}", code="invalid_json").response()
    message = f"{where}: {first.get('msg')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return ApiError(400, message, param=where, code="invalid_value").response()


async def http_handler(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return ApiError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})).response()


async def api_error_handler(_: Request, exc: ServiceError) -> JSONResponse:
    return error_response(exc)


async def unexpected_handler(_: Request, exc: Exception) -> JSONResponse:
    # A bug of ours: still OpenAI's shape, never a traceback in the body.
    return ApiError(500, f"internal error ({type(exc).__name__})", code="internal_error").response()


async def store_error_handler(_: Request, exc: Exception) -> JSONResponse:
    # The database is unreachable or refused the write: a service problem, said plainly.
    return ApiError(503, f"the run store is unavailable: {exc}", code="store_unavailable").response()
