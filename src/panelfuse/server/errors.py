"""Errors in OpenAI's shape ({"error": {"message", "type", "param", "code"}}) with the right status."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from panelfuse.service.errors import ServiceError, from_provider_error
from panelfuse.service.requests import MAX_JSON_DEPTH, first_problem

__all__ = ["ApiError", "ServiceError", "error_response", "from_provider_error"]


class ApiError(ServiceError):
    """A ServiceError raised by the HTTP layer itself."""

    def response(self) -> JSONResponse:
        return error_response(self)


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an error may echo what the caller sent (a field name, an id), and a
    lone surrogate in it could not be encoded as UTF-8; escaped, any string can be."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(exc: ServiceError) -> JSONResponse:
    return AsciiJSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


async def validation_handler(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if errors and errors[0].get("type") == "json_invalid":
        return ApiError(400, f"the body is not valid JSON: {errors[0].get('msg')}", code="invalid_json").response()
    loc, msg = first_problem(errors)
    where = _loc(loc)
    if any(e.get("type") == "unreadable_body" for e in errors):
        # too deep or a non-finite number: the message names the field itself
        return ApiError(400, msg, param=msg.split(":", 1)[0], code="invalid_json").response()
    message = f"{where}: {msg}"
    others = len({tuple(e.get("loc", ()))[:2] for e in errors}) - 1  # a union's branches are one problem
    if others > 0:
        message += f" (and {others} more problem{'s' if others > 1 else ''})"
    return ApiError(400, message, param=where, code="invalid_value").response()


# FastAPI's own words when the body cannot be decoded at all (e.g. nested past the decoder's recursion
# limit, around 1000 levels): said plainly, as invalid JSON.
_BODY_PARSE_ERROR = "There was an error parsing the body"


async def http_handler(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400 and exc.detail == _BODY_PARSE_ERROR:
        return ApiError(
            400,
            f"the body could not be parsed as JSON (nested too deep? the limit is {MAX_JSON_DEPTH} levels)",
            code="invalid_json",
        ).response()
    return ApiError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})).response()


async def api_error_handler(_: Request, exc: ServiceError) -> JSONResponse:
    return error_response(exc)


async def unexpected_handler(_: Request, exc: Exception) -> JSONResponse:
    # A bug of ours: still OpenAI's shape, never a traceback in the body.
    return ApiError(500, f"internal error ({type(exc).__name__})", code="internal_error").response()


async def store_error_handler(_: Request, exc: Exception) -> JSONResponse:
    # The database is unreachable or refused the write: a service problem, said plainly.
    return ApiError(503, f"the run store is unavailable: {exc}", code="store_unavailable").response()
