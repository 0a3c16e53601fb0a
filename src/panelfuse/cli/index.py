"""`panelfuse index`: build the offline corpus index that the web_search tool answers from."""

from __future__ import annotations

from typing import Annotated

import typer

from panelfuse.cli.common import fail, make_console


def index_cmd(
    folder: Annotated[str, typer.Argument(help="a folder of .txt, .md and .html files (PDF: index its text)")],
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            help="the index file (default: corpus.db in the user data "
            "dir, where web_search looks unless [tools] corpus_index "
            "says otherwise)",
        ),
    ] = None,
) -> None:
    """Build the local corpus index (SQLite FTS5, BM25) that web_search answers from, offline."""
    from panelfuse.tools.corpus import build_index  # keeps the other commands from loading the tools

    try:
        stats = build_index(folder, out)
    except (NotADirectoryError, OSError) as exc:
        raise fail(str(exc), 2) from exc
    console = make_console()
    console.print(f"indexed {stats.files} files ({stats.chunks} passages) into {stats.path}", markup=False)
    for path, why in stats.skipped:
        console.print(f"[yellow]skipped[/] {path}: {why}")
