"""web_search backends: one interface, and the SearXNG, Brave and Tavily HTTP APIs.

Backends talk only to the endpoint the operator configured (no SSRF guard: the operator chose it).
Every failure is a value (SearchResult.error). `billed` says whether a request reached the backend,
which is what its price per request applies to.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import httpx

from panelfuse.providers.http import shared_client

MAX_QUERY_CHARS = 400


@dataclass(frozen=True)
class SearchHit:
    title: str
    url: str  # a web URL, or a file:// URI for the local corpus
    snippet: str


@dataclass
class SearchResult:
    query: str
    backend: str
    hits: list[SearchHit] = field(default_factory=list)
    error: str | None = None
    billed: bool = False  # a request reached the backend (its price applies)


class SearchBackend(abc.ABC):
    name: str = "search"
    price_per_request: float = 0.0  # USD

    def available(self) -> bool:
        """Whether the backend can answer at all (e.g. the corpus index exists); checked when offering."""
        return True

    @abc.abstractmethod
    async def search(self, query: str, max_results: int = 5) -> SearchResult:
        """Callers bound the whole call with asyncio.timeout; backends also set their own HTTP deadline."""


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def hits_from(items: Any, snippet_key: str, max_results: int) -> list[SearchHit]:
    """Search hits from a backend's result list, skipping malformed entries. Pure."""
    out = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not _text(item.get("url")):
            continue
        out.append(SearchHit(_text(item.get("title")), _text(item.get("url")), _text(item.get(snippet_key))))
        if len(out) >= max_results:
            break
    return out


class HttpSearchBackend(SearchBackend):
    """Common request handling: a deadline, status and JSON errors as values."""

    def __init__(
        self, base_url: str, *, api_key: str | None = None, price_per_request: float = 0.0, timeout: float = 15.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.price_per_request = price_per_request
        self.timeout = timeout

    def available(self) -> bool:
        return bool(self.base_url)

    @abc.abstractmethod
    def request(self, query: str, max_results: int) -> httpx.Request: ...

    @abc.abstractmethod
    def parse(self, data: Any, max_results: int) -> list[SearchHit]: ...

    async def search(self, query: str, max_results: int = 5) -> SearchResult:
        query = query.strip()[:MAX_QUERY_CHARS]
        out = SearchResult(query=query, backend=self.name)
        if not query:
            out.error = "empty query"
            return out
        client = shared_client()
        req = self.request(query, max_results)
        req.extensions["timeout"] = httpx.Timeout(self.timeout).as_dict()
        try:
            resp = await client.send(req)
        except httpx.TimeoutException:
            out.error, out.billed = f"{self.name}: timed out", True
            return out
        except httpx.HTTPError as exc:
            out.error = f"{self.name}: {type(exc).__name__}: {exc}"
            return out
        out.billed = True
        if resp.status_code >= 400:
            out.error = f"{self.name}: HTTP {resp.status_code}"
            return out
        try:
            out.hits = self.parse(resp.json(), max_results)
        except ValueError:
            out.error = f"{self.name}: the answer is not JSON"
        return out


class SearxngBackend(HttpSearchBackend):
    """A self-hosted SearXNG (its JSON format must be enabled in its settings: `formats: [html, json]`)."""

    name = "searxng"

    def request(self, query: str, max_results: int) -> httpx.Request:
        return httpx.Request("GET", f"{self.base_url}/search", params={"q": query, "format": "json"})

    def parse(self, data: Any, max_results: int) -> list[SearchHit]:
        return hits_from(data.get("results") if isinstance(data, dict) else None, "content", max_results)


class BraveBackend(HttpSearchBackend):
    name = "brave"
    default_url = "https://api.search.brave.com/res/v1"

    def available(self) -> bool:
        return bool(self.api_key)

    def request(self, query: str, max_results: int) -> httpx.Request:
        return httpx.Request(
            "GET",
            f"{self.base_url}/web/search",
            params={"q": query, "count": max_results},
            headers={"X-Subscription-Token": self.api_key or "", "Accept": "application/json"},
        )

    def parse(self, data: Any, max_results: int) -> list[SearchHit]:
        web = data.get("web") if isinstance(data, dict) else None
        return hits_from(web.get("results") if isinstance(web, dict) else None, "description", max_results)


class TavilyBackend(HttpSearchBackend):
    name = "tavily"
    default_url = "https://api.tavily.com"

    def available(self) -> bool:
        return bool(self.api_key)

    def request(self, query: str, max_results: int) -> httpx.Request:
        return httpx.Request(
            "POST",
            f"{self.base_url}/search",
            json={"query": query, "max_results": max_results},
            headers={"Authorization": f"Bearer {self.api_key or ''}"},
        )

    def parse(self, data: Any, max_results: int) -> list[SearchHit]:
        return hits_from(data.get("results") if isinstance(data, dict) else None, "content", max_results)
