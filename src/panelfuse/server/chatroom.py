"""The chatroom page: `/` serves index.html, `/static/...` the page's files, straight from the package.

No build step and no CDN: the files are plain ES modules shipped as package data. Every response says
`Cache-Control: no-cache` with an ETag, so browsers revalidate (a cheap 304) and never run a stale page
after an upgrade.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from importlib.resources.abc import Traversable

from fastapi import APIRouter, Request
from fastapi.responses import Response

from panelfuse.server.errors import ApiError

router = APIRouter(include_in_schema=False)

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
# Only our own files may run or load; answers are rendered as DOM text, and this is the second fence.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# A segment may not start with a dot: no `..`, no hidden files.
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def static_root() -> Traversable:
    return resources.files("panelfuse.server").joinpath("static")


def _find(path: str) -> tuple[bytes, str] | None:
    parts = path.split("/")
    if not path or not all(_SEGMENT.match(p) for p in parts):
        return None
    suffix = "." + parts[-1].rsplit(".", 1)[-1] if "." in parts[-1] else ""
    if suffix not in CONTENT_TYPES:
        return None
    node = static_root()
    for part in parts:
        node = node.joinpath(part)
    if not node.is_file():
        return None
    return node.read_bytes(), CONTENT_TYPES[suffix]


def _serve(path: str, request: Request) -> Response:
    found = _find(path)
    if found is None:
        raise ApiError(404, f"no such file '{path}'", code="not_found")
    body, content_type = found
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    headers = {"Cache-Control": "no-cache", "ETag": etag, "X-Content-Type-Options": "nosniff"}
    if content_type.startswith("text/html"):
        headers |= {"Content-Security-Policy": PAGE_CSP, "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    if request.method == "HEAD":
        return Response(status_code=200, headers={**headers, "Content-Length": str(len(body))}, media_type=content_type)
    return Response(body, media_type=content_type, headers=headers)


@router.api_route("/", methods=["GET", "HEAD"])
async def index(request: Request) -> Response:
    return _serve("index.html", request)


@router.api_route("/static/{path:path}", methods=["GET", "HEAD"])
async def static_file(path: str, request: Request) -> Response:
    return _serve(path, request)
