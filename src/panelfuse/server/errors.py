"""Errors in OpenAI's shape ({"error": {"message", "type", "param", "code"}}) with the right status."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from panelfuse.providers.errors import (
    AuthError,
    BadRequestError,
    DeadlineExceeded,
    NotFoundError,
    ProviderError,
    RateLimitedError,
)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "request_cancelled",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        err = {
            "message": self.message,
            "type": ERROR_TYPES.get(self.status, "api_error"),
            "param": self.param,
            "code": self.code,
            **self.extra,
        }
        return {"error": err}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_provider_error(exc: ProviderError) -> ApiError:
    """A proxied call's failure: the upstream's own 4xx meaning passes through; the rest is a 502/504."""
    code = exc.kind
    if isinstance(exc, NotFoundError):
        return ApiError(404, exc.message, code="model_not_found")
    if isinstance(exc, RateLimitedError):
        headers = {"Retry-After": str(int(exc.retry_after + 0.999))} if exc.retry_after is not None else {}
        return ApiError(429, f"upstream rate limit: {exc.message}", code="rate_limited", headers=headers)
    if isinstance(exc, AuthError):
        return ApiError(401, f"upstream rejected the credentials: {exc.message}", code="upstream_auth")
    if isinstance(exc, BadRequestError):
        return ApiError(400, f"upstream rejected the request: {exc.message}", code="upstream_bad_request")
    if isinstance(exc, DeadlineExceeded):
        return ApiError(504, f"upstream timed out: {exc.message}", code="timeout")
    return ApiError(502, str(exc), code=code, extra={"status_code": exc.status_code})


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


async def api_error_handler(_: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


async def unexpected_handler(_: Request, exc: Exception) -> JSONResponse:
    # A bug of ours: still OpenAI's shape, never a traceback in the body.
    return ApiError(500, f"internal error ({type(exc).__name__})", code="internal_error").response()


async def store_error_handler(_: Request, exc: Exception) -> JSONResponse:
    # The database is unreachable or refused the write: a service problem, said plainly.
    return ApiError(503, f"the run store is unavailable: {exc}", code="store_unavailable").response()
