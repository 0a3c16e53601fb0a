"""The toolbox: which tools exist, their JSON schemas, dispatch of one call, and refusals.

A tool's result is always a string for the model, with outside text inside untrusted blocks; a
failure is a result saying why, never an exception that would kill the member.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from panelfuse.config import ToolsConfig
from panelfuse.tools import untrusted
from panelfuse.tools.corpus import CorpusBackend
from panelfuse.tools.fetch import Fetcher, FetchPolicy
from panelfuse.tools.records import Citation, ToolUsage
from panelfuse.tools.search import BraveBackend, HttpSearchBackend, SearchBackend, SearxngBackend, TavilyBackend

WEB_SEARCH = "web_search"
WEB_FETCH = "web_fetch"
KNOWN_TOOLS = (WEB_SEARCH, WEB_FETCH)
# List prices of the hosted search APIs, USD per request; override with [tools.<service>] price.
DEFAULT_PRICES = {"brave": 0.005, "tavily": 0.008}

SCHEMAS: dict[str, dict[str, Any]] = {
    WEB_SEARCH: {
        "type": "function",
        "function": {
            "name": WEB_SEARCH,
            "description": "Search the web (or the configured document collection). Returns titles, URLs "
            "and snippets of the best matches.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "description": "what to search for", "maxLength": 400}},
                "required": ["query"],
                "additionalProperties": False,
            },
        },
    },
    WEB_FETCH: {
        "type": "function",
        "function": {
            "name": WEB_FETCH,
            "description": "Fetch one web page by URL and return its main text (cut to a budget).",
            "parameters": {
                "type": "object",
                "properties": {"url": {"type": "string", "description": "an http or https URL"}},
                "required": ["url"],
                "additionalProperties": False,
            },
        },
    },
}
ARGUMENT = {WEB_SEARCH: "query", WEB_FETCH: "url"}


@dataclass
class ToolOutcome:
    """One tool call's result: the text the model gets, and what it cost."""

    content: str
    executed: bool = False
    refused: bool = False
    citations: list[Citation] = field(default_factory=list)
    usage: ToolUsage = field(default_factory=ToolUsage)


def refusal(text: str) -> ToolOutcome:
    return ToolOutcome(content=f"Refused: {text}", refused=True, usage=ToolUsage(refused=1))


def not_offered(name: str, offered: Sequence[str]) -> ToolOutcome:
    return refusal(
        f"the tool '{name}' is not offered here. The tools you may call are: {', '.join(offered) or 'none'}."
    )


def limit_reached(limit: int) -> ToolOutcome:
    return refusal(
        f"the limit of {limit} tool calls for this answer is reached. Answer now from what you already have."
    )


def out_of_time() -> ToolOutcome:
    return refusal("the time for tool calls has run out. Answer now from what you already have.")


def parse_arguments(name: str, arguments: str) -> tuple[str | None, str | None]:
    """(the one argument's value, None) or (None, why it is unusable). Pure."""
    key = ARGUMENT[name]
    try:
        data = json.loads(arguments or "{}")
    except ValueError:
        return None, f'the arguments are not JSON; send {{"{key}": "..."}}'
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, str) or not value.strip():
        return None, f'\'{key}\' must be a non-empty string; send {{"{key}": "..."}}'
    return value.strip(), None


class Toolbox:
    def __init__(
        self,
        search: SearchBackend | None = None,
        fetcher: Fetcher | None = None,
        *,
        max_results: int = 5,
        result_tokens: int = 2000,
        tool_timeout: float = 30.0,
    ) -> None:
        self.search = search
        self.fetcher = fetcher
        self.max_results = max_results
        self.result_chars = result_tokens * 4
        self.tool_timeout = tool_timeout

    # ---- what is offered --------------------------------------------------------------------------

    def can_search(self) -> bool:
        return self.search is not None and self.search.available()

    def available(self) -> list[str]:
        return [n for n, ok in ((WEB_SEARCH, self.can_search()), (WEB_FETCH, self.fetcher is not None)) if ok]

    def offer(self, wanted: Sequence[str]) -> list[str]:
        """The tools of `wanted` this toolbox can run, in the spec's order (unknown names are dropped)."""
        have = self.available()
        return [n for n in dict.fromkeys(wanted) if n in have]

    @staticmethod
    def schemas(names: Sequence[str]) -> list[dict[str, Any]]:
        return [SCHEMAS[n] for n in names]

    @property
    def search_price(self) -> float:
        return self.search.price_per_request if self.search is not None else 0.0

    # ---- running one call -------------------------------------------------------------------------

    def _limit(self, time_left: float | None) -> float:
        return self.tool_timeout if time_left is None else max(0.0, min(self.tool_timeout, time_left))

    async def dispatch(self, name: str, arguments: str, offered: Sequence[str], *, time_left: float) -> ToolOutcome:
        """Run one call the model made, or refuse it with the reason. Never raises for tool failures."""
        if name not in offered or name not in KNOWN_TOOLS:
            return not_offered(name, offered)
        value, problem = parse_arguments(name, arguments)
        if value is None:
            return refusal(f"invalid arguments for {name}: {problem}.")
        if time_left <= 0:
            return out_of_time()
        if name == WEB_SEARCH:
            return await self.run_search(value, self.max_results, time_left=time_left)
        return await self.run_fetch(value, time_left=time_left)

    async def run_search(self, query: str, max_results: int, *, time_left: float | None = None) -> ToolOutcome:
        assert self.search is not None
        backend = self.search
        usage = ToolUsage(executed=1, search_requests=1, cost=backend.price_per_request)
        try:
            async with asyncio.timeout(self._limit(time_left)):
                result = await backend.search(query, max_results)
        except TimeoutError:  # the request went out: billed as made
            return ToolOutcome(f"web_search for {query!r} timed out.", executed=True, usage=usage)
        if not result.billed:
            usage.search_requests, usage.cost = 0, 0.0
        if result.error:
            return ToolOutcome(f"web_search for {query!r} failed: {result.error}", executed=True, usage=usage)
        if not result.hits:
            return ToolOutcome(f"web_search for {query!r} found nothing.", executed=True, usage=usage)
        share = max(200, self.result_chars // len(result.hits))
        blocks = [untrusted.wrap(f"Title: {h.title}\nURL: {h.url}\n{h.snippet[:share]}", h.url) for h in result.hits]
        text = f"web_search results for {query!r}:\n" + "\n".join(blocks)
        citations = [Citation(h.url, h.title) for h in result.hits]
        return ToolOutcome(text, executed=True, citations=citations, usage=usage)

    async def run_fetch(self, url: str, *, time_left: float | None = None) -> ToolOutcome:
        assert self.fetcher is not None
        usage = ToolUsage(executed=1, fetches=1)
        try:
            async with asyncio.timeout(self._limit(time_left)):
                page = await self.fetcher.fetch(url)
        except TimeoutError:
            return ToolOutcome(f"web_fetch of {url} timed out.", executed=True, usage=usage)
        if page.error:
            return ToolOutcome(f"web_fetch of {url} failed: {page.error}", executed=True, usage=usage)
        text = page.text[: self.result_chars]
        cut = page.truncated or len(page.text) > len(text)
        head = f"Title: {page.title}\nURL: {page.final_url}\n" if page.title else f"URL: {page.final_url}\n"
        body = untrusted.wrap(head + text, page.final_url)
        note = "\n(The page was cut to fit the budget.)" if cut else ""
        citation = Citation(page.final_url, page.title)
        return ToolOutcome(f"web_fetch of {url}:\n{body}{note}", executed=True, citations=[citation], usage=usage)

    # ---- construction -----------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, cfg: ToolsConfig | None = None, env: Mapping[str, str] | None = None, *, allow: Sequence[str] = ()
    ) -> Toolbox:
        """The toolbox a config describes. Cheap: nothing is opened until a tool runs."""
        cfg = cfg or ToolsConfig()
        env = os.environ if env is None else env
        search: SearchBackend | None = None
        if cfg.search == "corpus":
            search = CorpusBackend(cfg.corpus_index, price_per_request=cfg.corpus_price)
        elif cfg.search != "none":
            svc = getattr(cfg, cfg.search)
            price = svc.price if svc.price is not None else DEFAULT_PRICES.get(cfg.search, 0.0)
            kinds: dict[str, type[HttpSearchBackend]] = {
                "searxng": SearxngBackend,
                "brave": BraveBackend,
                "tavily": TavilyBackend,
            }
            kind = kinds[cfg.search]
            url = svc.url or getattr(kind, "default_url", "")
            search = kind(url, api_key=svc.resolved_api_key(env), price_per_request=price, timeout=svc.timeout)
        fetcher = None
        if cfg.fetch.enabled:
            f = cfg.fetch
            policy = FetchPolicy(
                connect_timeout=f.connect_timeout,
                read_timeout=f.read_timeout,
                max_bytes=f.max_bytes,
                max_redirects=f.max_redirects,
                max_tokens=cfg.result_tokens,
            )
            fetcher = Fetcher(policy, allow=[*f.allow, *allow])
        return cls(
            search, fetcher, max_results=cfg.max_results, result_tokens=cfg.result_tokens, tool_timeout=cfg.tool_timeout
        )
