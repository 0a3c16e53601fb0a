"""Main text out of an HTML page (trafilatura, with a plain html.parser fallback), and its title."""

from __future__ import annotations

import html.parser
import re

_SKIP = {"script", "style", "noscript", "template", "svg", "head"}
_BLOCK = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "section", "article", "pre"}


class _Stripper(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _SKIP:
            self._skip += 1
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIP and self._skip:
            self._skip -= 1
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._skip:
            self.parts.append(data)


def _tidy(text: str) -> str:
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def strip_html(markup: str) -> tuple[str, str]:
    """(title, visible text) by html.parser: every visible text, no boilerplate removal. Pure."""
    parser = _Stripper()
    parser.feed(markup)
    parser.close()
    return _tidy("".join(parser.title)), _tidy("".join(parser.parts))


def html_to_text(markup: str, url: str | None = None) -> tuple[str, str]:
    """(title, main text). trafilatura drops navigation and boilerplate; on a page too small or odd for
    it, every visible text is kept instead. CPU-bound: call it in a worker thread for big pages."""
    title, visible = strip_html(markup)
    try:
        import trafilatura

        main = trafilatura.extract(markup, url=url, include_comments=False, include_tables=True, favor_recall=True)
    except Exception:  # a parser crash on hostile markup must not lose the page
        main = None
    return title, _tidy(main) if main else visible
