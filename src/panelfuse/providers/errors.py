"""Typed provider errors: every adapter maps its failures onto these, so callers never parse messages.

An upstream's error text reaches responses, stored runs and logs, so it is scrubbed here, where it
becomes a value: the configured provider keys (`register_secret`) and anything shaped like a key or a
bearer token become `[redacted]`, and the text is capped (docs/security.md).
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"
MAX_MESSAGE_CHARS = 1000
MIN_SECRET_CHARS = 8  # shorter values would redact ordinary words
_SECRETS: set[str] = set()
_KEY_SHAPES = re.compile(
    r"(?i)\b(?:bearer\s+[A-Za-z0-9._~+/=-]{6,}"  # an Authorization header's value
    r"|(?:sk-(?:or-|ant-|proj-)?|pf-)[A-Za-z0-9_-]{6,}"  # OpenAI, OpenRouter, Anthropic, panelfuse keys
    r"|(?:api[-_]?key|x-api-key)[\"']?\s*[:=]\s*[\"']?[^\s\"',;]{6,})"  # api_key=..., "x-api-key": "..."
)


def register_secret(value: str | None) -> None:
    """A configured key that must never appear in an error's text (the server registers every provider
    key it is configured with)."""
    if value and len(value) >= MIN_SECRET_CHARS:
        _SECRETS.add(value)


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` without registered secrets, `secrets`, or anything shaped like a key; at most
    MAX_MESSAGE_CHARS (the cut is made after scrubbing, so it cannot leave half a key)."""
    for secret in sorted({*_SECRETS, *(s for s in secrets if len(s) >= MIN_SECRET_CHARS)}, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _KEY_SHAPES.sub(REDACTED, text)
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "…"


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
        message = scrub(message)
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
