"""The ASGI middleware around every route: the body-size limit (413, chunked bodies too), the Host
check while auth is off (DNS rebinding), OpenRouter's `/api/v1` base URL, the request counter."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from panelfuse.server.access import host_allowed
from panelfuse.server.errors import ApiError
from panelfuse.server.state import GatewayState
from panelfuse.service import metrics


class BodyLimit:
    """413 for bodies over the limit, by Content-Length or by counting a chunked body as it arrives.

    A chunked body is only known to be too large while the route reads it; an exception raised there
    would become FastAPI's 400 ("error parsing the body"). So the 413 is sent from here, the route is
    told the client left, and whatever it answers after that is dropped."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def too_big(self) -> ApiError:
        return ApiError(413, f"the request body is larger than {self.max_bytes} bytes", code="body_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self.too_big().response()(scope, receive, send)
            return
        seen, started, refused = 0, False, False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 is the answer
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def counting_receive() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if started:  # a route that answered before reading all of it: nothing left to say
                        raise self.too_big()
                    await _send_error(send, self.too_big())
                    refused = True
                    return {"type": "http.disconnect"}
            return message

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:
                raise  # after the 413, the route's complaint about the missing body is expected


async def _send_error(send: Send, error: ApiError) -> None:
    response = error.response()
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class HostCheck:
    """With auth off, only requests whose Host names this machine (or an allowed host) are served: a
    web page whose name the attacker re-points at 127.0.0.1 (DNS rebinding) sends its own name as Host.
    With auth on, any Host is accepted (a token is needed anyway)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = getattr(scope["app"].state, "gateway", None) if scope["type"] in ("http", "websocket") else None
        if state is None or await self._allowed(scope, state):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        error = ApiError(
            403,
            "this host name is not allowed while auth is off: use localhost, or start the server with "
            "--allowed-hosts (or turn auth on)",
            code="host_not_allowed",
        )
        await _send_error(send, error)

    @staticmethod
    async def _allowed(scope: Scope, state: GatewayState) -> bool:
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        return host_allowed(host, state.allowed_hosts) or await state.auth.is_on(state.store)


class ApiPrefix:
    """`/api/v1/...` is `/v1/...`: OpenRouter's users have `https://openrouter.ai/api/v1` as their base
    URL, so changing only the host must work. The path is rewritten before routing, so every /v1 route,
    including any added later, answers under both; only `/v1/...` is in the OpenAPI schema."""

    PREFIX = "/api/v1/"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] in ("http", "websocket") and (path.startswith(self.PREFIX) or path == "/api/v1"):
            scope = dict(scope)
            scope["path"] = path.removeprefix("/api")
            raw = scope.get("raw_path")
            if isinstance(raw, bytes) and raw.startswith(b"/api/"):
                scope["raw_path"] = raw.removeprefix(b"/api")
        await self.app(scope, receive, send)


class CountRequests:
    """Counts requests by route template and status. Pure ASGI (not BaseHTTPMiddleware, which hides
    client disconnects from the endpoints)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = "000"

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.REQUESTS.labels(scope.get("method", "?"), route, status).inc()
