"""The service's errors: one exception with the HTTP-style status, OpenAI-style type and a code."""

from __future__ import annotations

from typing import Any

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


class ServiceError(Exception):
    """A request the service refuses or could not serve: status, message and code as the caller sees
    them (each entry point renders it in its own API's error shape)."""

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
        """One shape that both the OpenAI and the OpenRouter SDKs parse as a typed error: OpenRouter's
        integer `code` (the HTTP status) and `metadata`, with OpenAI's `type` and `param` beside them.
        Our own reason (`model_not_found`, …) and any details (run id, failed models) are metadata."""
        return {"error": self.error_object()}

    def error_object(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "code": self.status,
            "type": ERROR_TYPES.get(self.status, "api_error"),
            "param": self.param,
            "metadata": {"error_code": self.code, **self.extra},
        }


def from_provider_error(exc: ProviderError) -> ServiceError:
    """A proxied call's failure: the upstream's own 4xx meaning passes through; the rest is a 502/504."""
    code = exc.kind
    if isinstance(exc, NotFoundError):
        return ServiceError(404, exc.message, code="model_not_found")
    if isinstance(exc, RateLimitedError):
        headers = {"Retry-After": str(int(exc.retry_after + 0.999))} if exc.retry_after is not None else {}
        return ServiceError(429, f"upstream rate limit: {exc.message}", code="rate_limited", headers=headers)
    if isinstance(exc, AuthError):
        return ServiceError(401, f"upstream rejected the credentials: {exc.message}", code="upstream_auth")
    if isinstance(exc, BadRequestError):
        return ServiceError(400, f"upstream rejected the request: {exc.message}", code="upstream_bad_request")
    if isinstance(exc, DeadlineExceeded):
        return ServiceError(504, f"upstream timed out: {exc.message}", code="timeout")
    return ServiceError(502, str(exc), code=code, extra={"status_code": exc.status_code})
