"""The process's pooled session for model calls (providers/http.py)."""

from __future__ import annotations

from aiohttp import web

from panelfuse.providers.http import close_shared_client, shared_session


async def test_a_cookie_an_upstream_sets_is_never_sent_back():
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.json_response({"ok": True})
        response.set_cookie("session", "caller-one", path="/")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        for _ in range(2):
            # localhost, not an IP: aiohttp's cookie jar keeps no cookie for an IP address
            async with shared_session().post(f"http://localhost:{port}/v1/chat/completions", json={}) as resp:
                assert resp.status == 200 and "session" in resp.headers.get("Set-Cookie", "")
        assert seen == [None, None]  # the second call, maybe another caller's, carries no cookie
    finally:
        await close_shared_client()
        await runner.cleanup()
