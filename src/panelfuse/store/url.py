"""Database URL handling: normalize plain forms to the async drivers, mask passwords for messages."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from panelfuse.store.errors import StoreURLError

# Which async driver a plain or sync URL is rewritten to.
_SQLITE_SYNC = {"sqlite", "sqlite+pysqlite"}
_PG_SYNC = {"postgresql", "postgres", "postgresql+psycopg2", "postgres+psycopg2"}
_SUPPORTED = {"sqlite+aiosqlite", "postgresql+asyncpg", "postgresql+psycopg"}
_USERINFO = re.compile(r"(?P<head>://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<tail>@)")


def mask_url(raw: str | URL) -> str:
    """The URL as text with any password replaced by ***; works on unparseable strings too."""
    if isinstance(raw, URL):
        return raw.render_as_string(hide_password=True)
    return _USERINFO.sub(lambda m: f"{m['head']}***{m['tail']}", raw)


def normalize_url(raw: str | URL) -> URL:
    """Parse `raw` and point it at an async driver: sqlite → aiosqlite, postgresql → asyncpg."""
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError, TypeError):
        # Unparseable text is not echoed: we cannot tell which part of it is a password.
        head = str(raw).split("://", 1)[0] if "://" in str(raw) else None
        scheme = head if head and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", head) else None
        raise StoreURLError(
            f"could not parse the database URL (scheme {scheme!r}): expected e.g. sqlite:///path/runs.db "
            "or postgresql://user:password@host:5432/dbname",
            scheme=scheme,
            url=None,
        ) from None
    masked = mask_url(url)
    scheme = url.drivername
    if scheme in _SQLITE_SYNC:
        url = url.set(drivername="sqlite+aiosqlite")
    elif scheme in _PG_SYNC or scheme == "postgres+asyncpg":
        url = url.set(drivername="postgresql+asyncpg")
        # libpq spells TLS `sslmode`; asyncpg's connect() only knows `ssl`.
        if "sslmode" in url.query and "ssl" not in url.query:
            query = dict(url.query)
            query["ssl"] = query.pop("sslmode")
            url = url.set(query=query)
    if url.drivername not in _SUPPORTED:
        raise StoreURLError(
            f"unsupported database URL scheme {scheme!r} in {masked!r}: panelfuse stores runs in "
            "SQLite (sqlite:///path/runs.db) or PostgreSQL (postgresql://user:password@host/dbname)",
            scheme=scheme,
            url=masked,
        )
    if url.get_backend_name() == "sqlite" and url.database in (None, ""):
        # A bare sqlite:// is an in-memory database; say so explicitly so it is never a surprise.
        url = url.set(database=":memory:")
    return url


def sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None for in-memory / non-SQLite URLs."""
    if url.get_backend_name() != "sqlite":
        return None
    db = url.database or ""
    if db in ("", ":memory:") or db.startswith("file:") or url.query.get("mode") == "memory":
        return None
    return Path(db)
