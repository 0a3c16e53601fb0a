"""Typed provider errors: every adapter maps its failures onto these, so callers never parse messages."""

from __future__ import annotations


class ProviderError(Exception):
    """Base of every error an adapter raises. `kind` is a stable short name for reports."""

    kind = "error"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        provider: str | None = None,
        model: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.provider = provider
        self.model = model

    def __str__(self) -> str:
        where = f"{self.provider}/{self.model}" if self.provider and self.model else (self.model or "")
        code = f" (HTTP {self.status_code})" if self.status_code else ""
        return f"{self.kind}{code}{': ' + where if where else ''}: {self.message}"


class AuthError(ProviderError):
    kind = "auth"


class BadRequestError(ProviderError):
    kind = "bad_request"


class NotFoundError(ProviderError):
    kind = "not_found"


class RateLimitedError(ProviderError):
    kind = "rate_limited"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class UpstreamError(ProviderError):
    """5xx answers and broken connections: the upstream, not the request, is at fault."""

    kind = "upstream"
    retryable = True


class DeadlineExceeded(ProviderError):
    kind = "timeout"


class RefusedError(ProviderError):
    """The provider's own refusal signal (content_filter, a refusal field); never guessed from text."""

    kind = "refused"


class BadResponseError(ProviderError):
    """The upstream answered, but not in a shape we can read (invalid JSON, malformed SSE)."""

    kind = "bad_response"
