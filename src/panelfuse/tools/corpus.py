"""The local corpus: `panelfuse index DIR` builds a SQLite FTS5 index (BM25 ranking) over a folder of
text, markdown and HTML files; the corpus search backend answers web_search from it, offline.

Files are cut into passages of about CHUNK_CHARS characters on paragraph boundaries, so a hit carries
the passage that matched, not a whole document. PDFs are not read: index their extracted text as .txt.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from panelfuse.tools.extract import html_to_text
from panelfuse.tools.search import SearchBackend, SearchHit, SearchResult

SUFFIXES = {
    ".txt": "text",
    ".text": "text",
    ".rst": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
}
CHUNK_CHARS = 1200
MAX_FILE_BYTES = 10_000_000
MAX_QUERY_TERMS = 32
SCHEMA_VERSION = "1"
# Words too common to help BM25 pick a passage; dropping them keeps OR-queries sharp.
STOPWORDS = frozenset(
    "a an and are as at be but by can do does for from has have how i in is it its of on or that the this to "
    "was were what when where which who why will with you your".split()
)


def default_index_path() -> Path:
    return Path(platformdirs.user_data_dir("panelfuse")) / "corpus.db"


@dataclass
class IndexStats:
    path: Path
    files: int = 0
    chunks: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)


def read_document(path: Path) -> tuple[str, str]:
    """(title, plain text) of a text, markdown or HTML file."""
    raw = path.read_bytes()[:MAX_FILE_BYTES].decode("utf-8", errors="replace")
    kind = SUFFIXES.get(path.suffix.lower(), "text")
    if kind == "html":
        title, text = html_to_text(raw)
        return title or path.stem, text
    title = ""
    for line in raw.splitlines():
        stripped = line.strip()
        if stripped:
            title = stripped.lstrip("#").strip() if kind == "markdown" else stripped
            break
    return (title[:120] or path.stem), raw


def chunk_text(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Passages of at most about `size` characters, split on blank lines, then lines, then hard. Pure."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    pieces: list[str] = []
    for p in paragraphs:
        while len(p) > size:
            cut = p.rfind("\n", 0, size)
            cut = cut if cut > size // 2 else p.rfind(" ", 0, size)
            cut = cut if cut > size // 2 else size
            pieces.append(p[:cut].strip())
            p = p[cut:].strip()
        if p:
            pieces.append(p)
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + len(piece) + 2 <= size:
            chunks[-1] += "\n\n" + piece
        else:
            chunks.append(piece)
    return chunks


def iter_files(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in SUFFIXES:
                yield Path(root) / name


def build_index(folder: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> IndexStats:
    """Index every supported file under `folder` into a new database at `out` (replaced atomically)."""
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    target = Path(out).expanduser() if out else default_index_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".building")
    tmp.unlink(missing_ok=True)
    stats = IndexStats(path=target)
    db = sqlite3.connect(tmp)
    try:
        db.execute("CREATE VIRTUAL TABLE chunks USING fts5(title, body, path UNINDEXED, tokenize='porter unicode61')")
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        for path in iter_files(root):
            try:
                title, text = read_document(path)
            except OSError as exc:
                stats.skipped.append((str(path), exc.strerror or str(exc)))
                continue
            chunks = chunk_text(text)
            if not chunks:
                stats.skipped.append((str(path), "no text"))
                continue
            db.executemany(
                "INSERT INTO chunks (title, body, path) VALUES (?, ?, ?)", [(title, c, str(path)) for c in chunks]
            )
            stats.files += 1
            stats.chunks += len(chunks)
        db.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("root", str(root)), ("built_at", str(int(time.time()))), ("schema", SCHEMA_VERSION)],
        )
        db.commit()
    finally:
        db.close()
    os.replace(tmp, target)
    return stats


def fts_query(text: str) -> str | None:
    """An FTS5 query that ORs the question's meaningful words, each quoted (so no user text is read as
    FTS syntax); BM25 then ranks passages matching more and rarer words first. None if no word is left."""
    words = [w for w in re.findall(r"\w+", text.lower()) if len(w) > 1 and w not in STOPWORDS]
    words = list(dict.fromkeys(words))[:MAX_QUERY_TERMS]
    return " OR ".join(f'"{w}"' for w in words) or None


def search_index(db_path: Path, query: str, max_results: int = 5) -> list[SearchHit]:
    """The best passage of each of the `max_results` best-matching files."""
    match = fts_query(query)
    if match is None:
        return []
    db = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = db.execute(
            # title matches count double: a document about the topic beats one that mentions it
            "SELECT path, title, body FROM chunks WHERE chunks MATCH ? ORDER BY bm25(chunks, 2.0, 1.0) LIMIT ?",
            (match, max_results * 8),
        ).fetchall()
    finally:
        db.close()
    hits: dict[str, SearchHit] = {}
    for path, title, body in rows:
        if path not in hits:
            hits[path] = SearchHit(title=title, url=Path(path).as_uri(), snippet=body)
        if len(hits) >= max_results:
            break
    return list(hits.values())


class CorpusBackend(SearchBackend):
    name = "corpus"

    def __init__(self, index_path: str | os.PathLike[str] | None = None, price_per_request: float = 0.0) -> None:
        self.index_path = Path(index_path).expanduser() if index_path else default_index_path()
        self.price_per_request = price_per_request

    def available(self) -> bool:
        return self.index_path.is_file()

    async def search(self, query: str, max_results: int = 5) -> SearchResult:
        out = SearchResult(query=query, backend=self.name)
        if not self.available():
            out.error = f"no corpus index at {self.index_path} (build one with `panelfuse index DIR`)"
            return out
        try:
            out.hits = await asyncio.to_thread(search_index, self.index_path, query, max_results)
            out.billed = True
        except sqlite3.Error as exc:
            out.error = f"corpus index unreadable: {exc}"
        return out
