"""The process's pooled session for model calls (providers/http.py)."""

from __future__ import annotations

from aiohttp import web

from panelfuse.providers.http import close_shared_client, shared_session
from serve_helpers import serving


async def test_a_cookie_an_upstream_sets_is_never_sent_back():
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.json_response({"ok": True})
        response.set_cookie("session", "caller-one", path="/")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    # localhost, not an IP: aiohttp's cookie jar keeps no cookie for an IP address
    async with serving(app, host="localhost") as url:
        try:
            for _ in range(2):
                async with shared_session().post(f"{url}/v1/chat/completions", json={}) as resp:
                    assert resp.status == 200 and "session" in resp.headers.get("Set-Cookie", "")
            assert seen == [None, None]  # the second call, maybe another caller's, carries no cookie
        finally:
            await close_shared_client()
