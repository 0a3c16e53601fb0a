"""Small typed records shared by the tool modules and the pipeline: citations and tool usage."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Citation:
    """A source whose text reached a model (a search hit, a fetched page, a corpus document)."""

    url: str
    title: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"url": self.url, "title": self.title}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Citation:
        return cls(url=str(d["url"]), title=str(d.get("title") or ""))


@dataclass
class ToolUsage:
    """What one member (or the judge, or a whole run) did with tools."""

    requested: int = 0  # tool calls the model asked for
    executed: int = 0  # ... that ran (a failed fetch still ran)
    refused: int = 0  # ... refused: not offered, past the limit, past the deadline, bad arguments
    search_requests: int = 0  # requests sent to the search backend (tool calls and pre-retrieval)
    fetches: int = 0  # pages fetched (attempted)
    cost: float = 0.0  # USD: the search backend's price per request × search_requests

    # Field by field, not through dataclasses.fields(): a run sums and shows these several times as it
    # ends, and fields() made that a visible share of a fusion's CPU (docs/performance.md).
    def add(self, other: ToolUsage) -> None:
        self.requested += other.requested
        self.executed += other.executed
        self.refused += other.refused
        self.search_requests += other.search_requests
        self.fetches += other.fetches
        self.cost += other.cost

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "executed": self.executed,
            "refused": self.refused,
            "search_requests": self.search_requests,
            "fetches": self.fetches,
            "cost": self.cost,
        }

    @classmethod
    def total(cls, usages: Iterable[ToolUsage]) -> ToolUsage:
        out = cls()
        for u in usages:
            out.add(u)
        return out


def dedupe_citations(citations: Iterable[Citation]) -> list[Citation]:
    """First occurrence of each URL wins (keeps the order sources were met); a later title fills a blank one."""
    seen: dict[str, Citation] = {}
    for c in citations:
        if not c.url:
            continue
        known = seen.get(c.url)
        if known is None or (not known.title and c.title):
            seen[c.url] = Citation(c.url, known.title if known and known.title else c.title)
    return list(seen.values())


def url_annotations(content: str, citations: Iterable[Citation]) -> list[dict[str, Any]]:
    """OpenAI `url_citation` annotations; indices locate the URL in the answer, or are 0 when it is absent."""
    out = []
    for c in dedupe_citations(citations):
        start = content.find(c.url)
        end = start + len(c.url) if start >= 0 else 0
        out.append(
            {
                "type": "url_citation",
                "url_citation": {"url": c.url, "title": c.title, "start_index": max(start, 0), "end_index": end},
            }
        )
    return out
