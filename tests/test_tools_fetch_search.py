"""web_fetch limits (bytes, redirects, content types) and the search backends, against a loopback site
and loopback fakes of the SearXNG, Brave and Tavily APIs."""

from __future__ import annotations

import json

import pytest

from panelfuse.config import ConfigError, ToolsConfig, load_config
from panelfuse.tools.corpus import CorpusBackend
from panelfuse.tools.fetch import Fetcher, FetchPolicy
from panelfuse.tools.search import BraveBackend, SearxngBackend, TavilyBackend
from panelfuse.tools.toolbox import WEB_FETCH, WEB_SEARCH, Toolbox
from tools_helpers import PAGE_FACT, running_site


@pytest.fixture
async def site():
    async with running_site() as s:
        yield s


def fetcher(**policy) -> Fetcher:
    return Fetcher(FetchPolicy(**policy), allow=["127.0.0.1"])


async def test_plain_text_is_returned_as_is(site):
    result = await fetcher().fetch(f"{site.url}/plain")
    assert result.ok and result.content_type == "text/plain" and result.text == "plain facts\n" * 3


async def test_the_byte_cap_stops_reading(site):
    result = await fetcher(max_bytes=1000, max_tokens=100_000).fetch(f"{site.url}/big")
    assert result.ok and result.truncated
    assert len(result.text) == 1000  # of the 1 MB served


async def test_the_token_budget_cuts_the_text(site):
    result = await fetcher(max_tokens=50).fetch(f"{site.url}/big")
    assert result.truncated and len(result.text) == 200


async def test_redirects_are_followed_up_to_the_limit(site):
    ok = await fetcher(max_redirects=3).fetch(f"{site.url}/hops/3")
    assert ok.ok and ok.redirects == 3 and PAGE_FACT in ok.text and ok.final_url == f"{site.url}/page"
    too_many = await fetcher(max_redirects=2).fetch(f"{site.url}/hops/3")
    assert not too_many.ok and "too many redirects" in too_many.error
    assert len([r for r in site.requests if r["path"] == "/page"]) == 1  # the refused chain never got there


async def test_a_non_text_content_type_is_refused(site):
    result = await fetcher().fetch(f"{site.url}/image")
    assert not result.ok and "image/png" in result.error and result.text == ""


async def test_an_http_error_is_a_value(site):
    result = await fetcher().fetch(f"{site.url}/missing")
    assert not result.ok and result.error == "HTTP 404"


async def test_searxng_backend(site):
    result = await SearxngBackend(site.url).search("deepest ocean", 5)
    assert result.error is None and result.billed
    assert [h.title for h in result.hits] == ["Ocean depths", "Trench facts"]
    assert result.hits[0].snippet == "The deepest point of the ocean."
    assert site.requests[-1]["query"] == {"q": "deepest ocean", "format": "json"}


async def test_brave_backend(site):
    result = await BraveBackend(f"{site.url}/res/v1", api_key="brave-key").search("trench", 1)
    assert result.error is None
    assert [(h.title, h.snippet) for h in result.hits] == [("Ocean depths", "The deepest point of the ocean.")]
    req = site.requests[-1]
    assert req["headers"]["x-subscription-token"] == "brave-key" and req["query"]["q"] == "trench"
    refused = await BraveBackend(f"{site.url}/res/v1", api_key="wrong").search("trench")
    assert refused.error == "brave: HTTP 401" and refused.hits == []
    assert not BraveBackend(f"{site.url}/res/v1", api_key=None).available()


async def test_tavily_backend(site):
    result = await TavilyBackend(site.url, api_key="tavily-key").search("trench", 2)
    assert result.error is None and [h.url for h in result.hits] == [f"{site.url}/page", "https://example.org/trench"]
    req = site.requests[-1]
    assert req["method"] == "POST" and req["body"] == {"query": "trench", "max_results": 2}
    assert req["headers"]["authorization"] == "Bearer tavily-key"


async def test_an_unreachable_backend_is_an_error_value():
    result = await SearxngBackend("http://127.0.0.1:9").search("x")
    assert result.error and result.hits == [] and not result.billed


async def test_search_results_reach_the_model_inside_untrusted_blocks(site):
    box = site.toolbox(price=0.01)
    outcome = await box.dispatch(WEB_SEARCH, json.dumps({"query": "deep"}), [WEB_SEARCH, WEB_FETCH], time_left=10)
    assert outcome.executed and outcome.usage.search_requests == 1 and outcome.usage.cost == pytest.approx(0.01)
    assert outcome.content.count("<untrusted_data source=") == 2
    assert "The deepest point of the ocean." in outcome.content.split("<untrusted_data", 1)[1]
    assert [c.url for c in outcome.citations] == [f"{site.url}/page", "https://example.org/trench"]


async def test_a_fetched_page_reaches_the_model_inside_an_untrusted_block(site):
    outcome = await site.toolbox().dispatch(
        WEB_FETCH, json.dumps({"url": f"{site.url}/page"}), [WEB_FETCH], time_left=10
    )
    block = outcome.content.split(f'<untrusted_data source="{site.url}/page">', 1)[1]
    assert PAGE_FACT in block.split("</untrusted_data>", 1)[0]
    assert outcome.citations[0].title == "Ocean depths"


async def test_dispatch_refuses_unoffered_tools_and_bad_arguments(site):
    box = site.toolbox()
    unoffered = await box.dispatch(WEB_FETCH, '{"url": "http://x"}', [WEB_SEARCH], time_left=10)
    assert unoffered.refused and not unoffered.executed and "not offered" in unoffered.content
    assert "web_search" in unoffered.content
    unknown = await box.dispatch("shell", "{}", [WEB_SEARCH, "shell"], time_left=10)
    assert unknown.refused
    bad = await box.dispatch(WEB_SEARCH, "not json", [WEB_SEARCH], time_left=10)
    assert bad.refused and "not JSON" in bad.content
    failed = await box.dispatch(WEB_FETCH, '{"url": "http://10.0.0.1/"}', [WEB_FETCH], time_left=10)
    assert failed.executed and not failed.refused and "non-public address" in failed.content


def test_toolbox_from_config(tmp_path):
    env = {"BRAVE_API_KEY": "k"}
    box = Toolbox.from_config(ToolsConfig.model_validate({"search": "brave", "fetch": {"enabled": True}}), env)
    assert isinstance(box.search, BraveBackend) and box.search.api_key == "k" and box.search_price == 0.005
    assert box.available() == [WEB_SEARCH, WEB_FETCH]
    # The default: the local corpus (absent here, so no web_search) and no web_fetch: nothing leaves the machine.
    default = Toolbox.from_config(ToolsConfig(corpus_index=str(tmp_path / "none.db")), {})
    assert isinstance(default.search, CorpusBackend) and default.available() == []
    assert default.offer(["web_search", "web_fetch"]) == []
    priced = ToolsConfig.model_validate({"search": "tavily", "tavily": {"price": 0.02, "api_key": "t"}})
    assert Toolbox.from_config(priced, {}).search_price == 0.02


def test_tools_config_in_the_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        '[tools]\nsearch = "searxng"\n\n[tools.searxng]\nurl = "http://127.0.0.1:8888"\n'
        '\n[tools.fetch]\nenabled = true\nallow = ["wiki.lan", "10.1.0.0/16"]\nmax_bytes = 5000\n'
    )
    cfg = load_config(path, env={})
    assert cfg.tools.search == "searxng" and cfg.tools.fetch.allow == ["wiki.lan", "10.1.0.0/16"]
    path.write_text('[tools]\nsearch = "searxng"\n')
    with pytest.raises(ConfigError, match="searxng"):
        load_config(path, env={})
    path.write_text("[tools.fetch]\nenabled = true\nmax_bytes = -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.field == "tools.fetch.max_bytes" and info.value.line == 3
