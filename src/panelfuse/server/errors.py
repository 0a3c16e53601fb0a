"""Errors in the caller's API's shape with the right status: OpenAI's ({"error": {"message", "type",
"param", "code"}}) everywhere, Anthropic's ({"type": "error", "error": {"type", "message"}}) on the
Messages API's routes."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from panelfuse.service.errors import ServiceError, from_provider_error
from panelfuse.service.messages_output import error_body as anthropic_error_body
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


def error_response(exc: ServiceError, request: Request | None = None) -> JSONResponse:
    body = anthropic_error_body(exc) if request is not None and speaks_anthropic(request) else exc.body()
    return AsciiJSONResponse(body, status_code=exc.status, headers=exc.headers)


def speaks_anthropic(request: Request) -> bool:
    """The Messages API's routes answer errors in Anthropic's shape (the Anthropic SDK reads it)."""
    return request.url.path.endswith("/v1/messages")


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


async def validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if errors and errors[0].get("type") == "json_invalid":
        invalid = ApiError(400, f"the body is not valid JSON: {errors[0].get('msg')}", code="invalid_json")
        return error_response(invalid, request)
    loc, msg = first_problem(errors)
    where = _loc(loc)
    if any(e.get("type") == "unreadable_body" for e in errors):
        # too deep or a non-finite number: the message names the field itself
        return error_response(ApiError(400, msg, param=msg.split(":", 1)[0], code="invalid_json"), request)
    message = f"{where}: {msg}"
    others = len({tuple(e.get("loc", ()))[:2] for e in errors}) - 1  # a union's branches are one problem
    if others > 0:
        message += f" (and {others} more problem{'s' if others > 1 else ''})"
    return error_response(ApiError(400, message, param=where, code="invalid_value"), request)


# FastAPI's own words when the body cannot be decoded at all (e.g. nested past the decoder's recursion
# limit, around 1000 levels): said plainly, as invalid JSON.
_BODY_PARSE_ERROR = "There was an error parsing the body"


async def http_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400 and exc.detail == _BODY_PARSE_ERROR:
        unparsed = ApiError(
            400,
            f"the body could not be parsed as JSON (nested too deep? the limit is {MAX_JSON_DEPTH} levels)",
            code="invalid_json",
        )
        return error_response(unparsed, request)
    return error_response(ApiError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})), request)


async def api_error_handler(request: Request, exc: ServiceError) -> JSONResponse:
    return error_response(exc, request)


async def unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    # A bug of ours: still the caller's error shape, never a traceback in the body.
    return error_response(ApiError(500, f"internal error ({type(exc).__name__})", code="internal_error"), request)


async def store_error_handler(request: Request, exc: Exception) -> JSONResponse:
    # The database is unreachable or refused the write: a service problem, said plainly.
    unavailable = ApiError(503, f"the run store is unavailable: {exc}", code="store_unavailable")
    return error_response(unavailable, request)
