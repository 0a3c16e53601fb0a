"""The local corpus: indexing a folder (text, markdown, HTML), BM25 search, the `panelfuse index`
command, and the real `local` preset answering with pre-retrieved passages."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from conftest import require_local_extra
from panelfuse.cli import app
from panelfuse.pipeline.run import Fusion
from panelfuse.providers.local import LocalProvider
from panelfuse.spec import all_presets, spec_from_preset
from panelfuse.tools.corpus import CorpusBackend, build_index, chunk_text, fts_query, search_index
from panelfuse.tools.toolbox import Toolbox

DOCS = {
    "biology/photosynthesis.md": "# Photosynthesis\n\nPlants turn light into chemical energy. Chlorophyll in the "
    "chloroplasts absorbs red and blue light.\n",
    "geology/volcanoes.txt": "Volcanoes\n\nMagma rises through the crust and erupts as lava. Basalt forms when "
    "lava cools quickly.\n",
    "astronomy/tides.html": "<html><head><title>Why tides happen</title></head><body><nav>menu menu</nav>"
    "<article><p>Tides are caused by the gravitational pull of the Moon and, less, the Sun."
    "</p><p>Spring tides happen at new and full moon.</p></article></body></html>",
    "notes/.hidden.md": "secret chlorophyll notes",
    "images/logo.png": "not text",
}


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "docs"
    for name, text in DOCS.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root, build_index(root, tmp_path / "corpus.db")


def test_index_a_folder(corpus):
    _, stats = corpus
    assert stats.files == 3 and stats.chunks == 3 and stats.skipped == []


@pytest.mark.parametrize(
    ("question", "expected", "title"),
    [
        ("What does chlorophyll absorb?", "biology/photosynthesis.md", "Photosynthesis"),
        ("why is there a spring tide at full moon", "astronomy/tides.html", "Why tides happen"),
        ("how does basalt form from lava?", "geology/volcanoes.txt", "Volcanoes"),
    ],
)
def test_search_finds_the_right_document(corpus, question, expected, title):
    root, stats = corpus
    hits = search_index(stats.path, question, 3)
    assert hits[0].url == (root / expected).as_uri() and hits[0].title == title
    assert len({h.url for h in hits}) == len(hits)  # one hit per document


def test_html_is_stripped_and_hidden_files_are_skipped(corpus):
    _, stats = corpus
    [hit] = search_index(stats.path, "gravitational pull", 5)
    assert "<p>" not in hit.snippet and "Tides are caused" in hit.snippet and "menu menu" not in hit.snippet
    assert all("hidden" not in h.url for h in search_index(stats.path, "chlorophyll notes secret", 5))


def test_queries_never_break_on_fts_syntax(corpus):
    _, stats = corpus
    assert fts_query('lava" OR NEAR(xy) AND * -') == '"lava" OR "near" OR "xy"'
    assert search_index(stats.path, 'lava" NEAR( *', 5)[0].title == "Volcanoes"
    assert search_index(stats.path, "?! the of", 5) == []


def test_chunks_respect_the_size():
    text = "\n\n".join(f"paragraph {i} " + "word " * 60 for i in range(20))
    chunks = chunk_text(text, 500)
    assert len(chunks) > 1 and all(len(c) <= 500 for c in chunks)
    assert "paragraph 0" in chunks[0] and "paragraph 19" in chunks[-1]


async def test_the_backend_without_an_index_says_so(tmp_path):
    backend = CorpusBackend(tmp_path / "none.db")
    assert not backend.available()
    result = await backend.search("x")
    assert result.hits == [] and "panelfuse index" in result.error


def test_the_index_command(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.md").write_text("# Alpha\n\nThe alpha document talks about zebras.\n")
    out = CliRunner().invoke(app, ["index", str(root), "--out", str(tmp_path / "idx.db")])
    assert out.exit_code == 0, out.output
    assert "indexed 1 files (1 passages)" in out.output
    assert search_index(tmp_path / "idx.db", "zebras")[0].title == "Alpha"
    missing = CliRunner().invoke(app, ["index", str(tmp_path / "nope"), "--out", str(tmp_path / "x.db")])
    assert missing.exit_code == 2 and "not a folder" in " ".join(missing.output.split())


@pytest.mark.local_model
async def test_local_preset_with_pre_retrieval(corpus, monkeypatch):
    require_local_extra()
    root, stats = corpus
    seen: list[list[dict]] = []
    original = LocalProvider._open_stream

    def recording(self, req):
        seen.append(req.messages)
        return original(self, req)

    monkeypatch.setattr(LocalProvider, "_open_stream", recording)
    spec = spec_from_preset("local", all_presets(), max_tokens=32)
    fusion = Fusion(spec, toolbox=Toolbox(CorpusBackend(stats.path)))
    result = await fusion.run("What does chlorophyll absorb?")

    assert result.status == "completed", result.error
    doc = (root / "biology/photosynthesis.md").as_uri()
    member_prompts = [json.dumps(m) for m in seen[:3]]  # the three members come first; then judge, synthesizer
    for prompt in member_prompts:
        blocks = re.findall(r'<untrusted_data source=\\"([^"\\]*)\\">(.*?)</untrusted_data>', prompt)
        assert any(src == doc and "Chlorophyll in the chloroplasts" in body for src, body in blocks)
    assert doc in [a["url_citation"]["url"] for a in result.annotations]
    assert str(root / "biology/photosynthesis.md") in doc
    assert result.tool_usage.search_requests == 1 and result.cost == 0.0
