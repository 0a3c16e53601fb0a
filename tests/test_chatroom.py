"""The chatroom page (`/`) in a real browser: Debian's chromium driven by Playwright, against the gateway
on the fake upstream. Without chromium these tests skip with a message, unless CI=true (then they fail)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pytest

import gateway_helpers
from conftest import IN_CI
from gateway_helpers import Gateway, gateway_config
from panelfuse.testing import Failure, Script
from pipeline_helpers import judge_script, script_panel

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the dev extra is not installed
    expect = sync_playwright = None

CHROMIUM = os.environ.get("PANELFUSE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
HERE = Path(__file__).parent
ARTIFACTS = HERE / "artifacts"
AXE = HERE / "vendor" / "axe.min.js"
MODELS = ("m1", "m2", "m3", "judge", "judge2", "synth", "plain")
FINAL = "The sky is blue because air scatters short wavelengths."

if expect is not None:
    expect.set_options(timeout=15_000)


def chatroom_config(fake):
    """The test gateway's config, with the fake models listed so GET /v1/models offers them."""
    cfg = gateway_config(fake)
    cfg.providers["fake"].models = {m: m for m in MODELS}
    return cfg


@pytest.fixture(scope="module")
def browser():
    missing = None
    if sync_playwright is None:
        missing = "playwright is not installed (pip install -e '.[dev]')"
    elif not Path(CHROMIUM).exists():
        missing = f"chromium not found at {CHROMIUM} (apt-get install chromium, or set PANELFUSE_CHROMIUM)"
    if missing:
        if IN_CI:
            pytest.fail(f"chatroom tests need a browser: {missing} (CI=true: a missing browser is a failure)")
        pytest.skip(f"chatroom tests need a browser: {missing}")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def gateway(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(gateway_helpers, "gateway_config", chatroom_config)
    gw = Gateway(fake, f"sqlite+aiosqlite:///{tmp_path}/runs.db").start()
    yield gw
    gw.stop()


def open_page(browser, gateway, **context_options):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, **context_options)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(gateway.url + "/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.js_errors = errors
    return page


@pytest.fixture
def page(browser, gateway):
    p = open_page(browser, gateway)
    yield p
    assert p.js_errors == []
    p.context.close()


def build_panel(page, models=("fake/m1", "fake/m2", "fake/m3"), judge="fake/judge"):
    page.get_by_label("Preset").select_option("custom")
    for i, model in enumerate(models):
        label = f"Member {'ABCDEFGH'[i]} model"
        if page.get_by_label(label).count() == 0:
            page.get_by_role("button", name="Add member").click()
        page.get_by_label(label).fill(model)
    page.get_by_label("Judge model", exact=True).fill(judge)


def send(page, text):
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_role("button", name="Send").click()


def member(page, label, turn=-1):
    return page.locator(".turn").nth(turn).locator(f'.member[data-member="{label}"]')


def wait_done(page, turn=-1):
    expect(page.locator(".turn").nth(turn).locator(".turn-title .badge")).to_have_text(re.compile("^completed"))


def slow_judge(seconds):
    def script(body):
        s = judge_script(body)
        s.latency = seconds
        return s

    return script


# --- serving -----------------------------------------------------------------------------------------


def test_page_and_static_files_are_served_from_the_package(gateway):
    index = httpx.get(gateway.url + "/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in index.headers["content-security-policy"]
    assert index.headers["cache-control"] == "no-cache"
    assert 'src="static/app.js"' in index.text and "https://" not in index.text  # no CDN
    js = httpx.get(gateway.url + "/static/app.js")
    assert js.headers["content-type"].startswith("text/javascript")
    assert httpx.get(gateway.url + "/static/app.js", headers={"If-None-Match": js.headers["etag"]}).status_code == 304
    assert httpx.get(gateway.url + "/static/style.css").headers["content-type"].startswith("text/css")
    for bad in ("/static/../chatroom.py", "/static/.hidden.js", "/static/nope.js", "/static/%2e%2e/app.py"):
        assert httpx.get(gateway.url + bad).status_code == 404, bad


# --- a run, watched live -----------------------------------------------------------------------------


def test_panel_answers_arrive_before_the_analysis_then_the_answer_streams(fake, gateway, page):
    synth = Script(text=FINAL, prompt_tokens=200, completion_tokens=30, token_rate=4)
    script_panel(fake, judge=slow_judge(3), synth=synth)
    build_panel(page)
    page.get_by_label("Weight B").fill("2")
    expect(page.locator("#estimate")).to_contain_text("Worst-case cost: $")
    send(page, "Why is the sky blue?")

    # The judge is held back: all three answers are on the page while the analysis is still pending.
    expect(member(page, "A")).to_contain_text("Rayleigh scattering makes the sky blue.")
    expect(member(page, "B")).to_contain_text("Shorter wavelengths scatter more.")
    expect(member(page, "C")).to_contain_text("Air molecules scatter blue light.")
    expect(member(page, "A").locator(".badge")).to_have_text("ok")
    expect(page.locator(".analysis .stage-status")).to_contain_text("is reading the answers")
    expect(page.locator(".analysis-body")).to_have_count(0)

    analysis = page.locator(".analysis-body")
    for title in ("Consensus", "Contradictions", "Partial coverage", "Unique insights", "Blind spots", "Anomalies"):
        expect(analysis.get_by_role("heading", name=title)).to_be_visible()
    expect(analysis).to_contain_text("the sky scatters blue light")
    expect(analysis.locator(".an-contradictions")).to_contain_text("A · fake/m1: view A")
    # The answer is shown while it streams (busy, partial), then complete.
    expect(page.locator('.answer-text[aria-busy="true"]')).to_contain_text("The sky")
    expect(page.locator(".answer-text")).to_have_text(FINAL)
    wait_done(page)
    expect(member(page, "A").locator(".meta")).to_contain_text("$")
    totals = page.locator(".totals")
    expect(totals.locator(".total-cost")).to_contain_text("$")
    expect(totals.locator("table")).to_contain_text("A · fake/m1")
    expect(totals.locator("table")).to_contain_text("synthesizer · fake/synth")

    run_id = page.locator(".run-info").inner_text().split()[1]
    run = httpx.get(f"{gateway.url}/v1/fusion/runs/{run_id}").json()
    assert [m["model"] for m in run["spec"]["members"]] == ["fake/m1", "fake/m2", "fake/m3"]
    assert run["spec"]["members"][1]["weight"] == 2 and run["spec"]["judge"]["model"] == "fake/judge"


def test_a_failed_member_shows_its_reason_while_the_run_completes(fake, page):
    script_panel(fake, m2=Script(failure=Failure.HTTP, status_code=400))
    build_panel(page)
    send(page, "q")
    expect(member(page, "B").locator(".badge")).to_have_text("failed")
    expect(member(page, "B").locator(".error")).to_contain_text("400")
    expect(page.locator(".answer-text")).to_have_text(FINAL)
    expect(page.locator(".turn-title .badge")).to_have_text("completed, degraded")


def test_a_hedge_that_wins_replaces_the_member_text(fake, browser, tmp_path):
    """`hedge_ms`: the slow first call's streamed text gives way to the duplicate's, and the card says so."""
    config = chatroom_config(fake)
    members = [{"model": "fake/m1", "fallbacks": ["fake/backup"]}, "fake/m2", "fake/m3"]
    config.presets["hedged"] = {**gateway_helpers.TEST_PRESET, "members": members, "hedge_ms": 100}
    gw = Gateway(fake, f"sqlite+aiosqlite:///{tmp_path}/runs.db", config=config).start()
    page = open_page(browser, gw)
    try:
        slow = "slow words " * 40
        script_panel(fake, m1=Script(text=slow, token_rate=5), backup=Script(text="The backup's answer.", latency=0.5))
        page.get_by_label("Preset").select_option("hedged")
        send(page, "q")
        card = member(page, "A")
        expect(card).to_contain_text("slow words")  # the first call's text streams meanwhile
        expect(card).to_contain_text("also asked fake/backup")
        expect(card).to_contain_text("fake/backup answered first; fake/m1 was cancelled")
        expect(card.locator(".badge")).to_have_text("ok")
        expect(card).to_contain_text("The backup's answer.")
        expect(card).not_to_contain_text("slow words")
        wait_done(page)
        assert page.js_errors == []
    finally:
        page.context.close()
        gw.stop()


def test_html_in_answers_is_shown_as_text_and_never_runs(fake, page):
    evil = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> **bold**'
    script_panel(
        fake,
        m1=Script(text=evil),
        synth=Script(text=f"{evil}\n\n[bad](javascript:window.__pwned=3) [good](https://example.com/doc)"),
    )
    build_panel(page)
    send(page, "q")
    expect(page.locator(".answer-text")).to_contain_text("<script>window.__pwned = 1</script>")
    expect(member(page, "A")).to_contain_text('<img src=x onerror="window.__pwned = 2">')
    expect(page.locator(".answer-text strong")).to_have_text("bold")
    expect(page.locator(".answer-text a")).to_have_attribute("href", "https://example.com/doc")
    assert page.locator("#transcript img, #transcript script, #transcript a[href^='javascript']").count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"


def test_markdown_and_citations_render_safely(page):
    out = page.evaluate("""async () => {
        const m = await import('./static/markdown.js');
        const box = document.createElement('div');
        const text = '# Title\\n\\n- one\\n- two\\n\\n```\\n<b>x</b>\\n```\\n\\n';
        box.append(m.renderMarkdown(text + '| a | b |\\n|---|---|\\n| 1 | 2 |'));
        const cites = m.renderCitations([
          {type: 'url_citation', url_citation: {url: 'https://example.org/a', title: 'Example A'}},
          {type: 'url_citation', url: 'https://example.org/b', title: 'Flat B'},
          {type: 'url_citation', url_citation: {url: 'javascript:alert(1)', title: 'Evil'}}]);
        return {html: box.innerHTML, links: [...cites.querySelectorAll('a')].map(a => [a.href, a.textContent])};
    }""")
    assert "<h4" in out["html"] and "<li>one</li>" in out["html"] and "<table>" in out["html"]
    assert "&lt;b&gt;x&lt;/b&gt;" in out["html"] and "<b>" not in out["html"]
    assert [href for href, _ in out["links"]] == ["https://example.org/a", "https://example.org/b"]
    assert out["links"][0][1].startswith("Example A")


# --- compare, re-synthesize, history, background --------------------------------------------------------


def test_compare_with_one_model_runs_beside_the_fusion(fake, page):
    script_panel(fake)
    fake.script("plain", Script(text="just one model", prompt_tokens=5, completion_tokens=3, cost=0.001))
    build_panel(page)
    page.get_by_label("Compare with one model").fill("fake/plain")
    send(page, "q")
    col = page.locator(".compare-col")
    expect(col.get_by_role("heading")).to_have_text("Compare: fake/plain")
    expect(col.locator(".compare-text")).to_have_text("just one model")
    expect(col.locator(".badge")).to_have_text("ok")
    expect(page.locator(".answer-text")).to_have_text(FINAL)
    assert fake.requests_for("plain")[0].body["messages"][-1]["content"] == "q"


def test_resynthesize_with_another_judge_and_mode(fake, page):
    script_panel(fake)
    build_panel(page)
    send(page, "q")
    wait_done(page)
    panel_calls = sum(len(fake.requests_for(m)) for m in ("m1", "m2", "m3"))
    fake.script("judge2", Script(text=json.dumps({"best": "C", "reason": "clearest"})))
    form = page.locator(".turn").first.locator("form.resynth")
    form.get_by_label("Judge model", exact=True).fill("fake/judge2")
    form.get_by_label("Mode", exact=True).select_option("best-of")
    form.get_by_role("button", name="Re-synthesize").click()
    again = page.locator(".turn").nth(1)
    expect(again.locator(".turn-title")).to_contain_text("Re-synthesis of run_")
    expect(again.locator(".answer-text")).to_have_text("Air molecules scatter blue light.")
    expect(again.locator(".best-of")).to_contain_text("C · fake/m3")
    assert fake.requests_for("judge2")
    assert sum(len(fake.requests_for(m)) for m in ("m1", "m2", "m3")) == panel_calls  # the panel is reused
    # The conversation now continues from the re-synthesized answer.
    send(page, "More?")
    expect(page.locator(".turn")).to_have_count(3)
    wait_done(page)
    sent = [m["content"] for m in fake.requests_for("m1")[-1].body["messages"] if m["role"] == "assistant"]
    assert sent[-1] == "Air molecules scatter blue light."


def test_reopen_from_history_and_continue_the_conversation(fake, browser, gateway, page):
    script_panel(fake)
    build_panel(page)
    send(page, "Why is the sky blue?")
    wait_done(page)
    expect(page.locator(".history-item").first).to_contain_text("completed")
    page.context.close()

    fresh = open_page(browser, gateway)
    item = fresh.locator(".history-item").first
    expect(item).to_contain_text("Why is the sky blue?")
    item.click()
    expect(member(fresh, "C")).to_contain_text("Air molecules scatter blue light.")
    expect(fresh.locator(".an-consensus")).to_contain_text("the sky scatters blue light")
    expect(fresh.locator(".answer-text")).to_have_text(FINAL)
    expect(fresh.get_by_label("Member C model")).to_have_value("fake/m3")  # the panel comes back too

    send(fresh, "And at sunset?")
    expect(fresh.locator(".turn")).to_have_count(2)
    wait_done(fresh)
    sent = [(m["role"], m["content"]) for m in fake.requests_for("m1")[-1].body["messages"] if m["role"] != "system"]
    assert sent[-3:] == [("user", "Why is the sky blue?"), ("assistant", FINAL), ("user", "And at sunset?")]
    assert fresh.js_errors == []
    fresh.context.close()


def test_a_background_run_reopens_and_continues_live(fake, browser, gateway, page):
    script_panel(fake, judge=slow_judge(4))
    build_panel(page)
    page.get_by_label("Keep running if I leave the page").check()
    send(page, "a long one")
    expect(member(page, "C")).to_contain_text("Air molecules")
    page.context.close()  # the tab goes away mid-run; the run keeps going

    fresh = open_page(browser, gateway)
    item = fresh.locator(".history-item").first
    expect(item).to_contain_text("running")
    item.click()
    expect(member(fresh, "A")).to_contain_text("Rayleigh scattering")  # replayed from the stored events
    expect(fresh.locator(".turn-title .badge")).to_have_text("running")
    expect(fresh.locator(".answer-text")).to_have_text(FINAL)  # then the live tail
    wait_done(fresh)
    run_id = fresh.locator(".run-info").inner_text().split()[1]
    run = httpx.get(f"{gateway.url}/v1/fusion/runs/{run_id}").json()
    assert run["status"] == "completed" and run["background"] is True
    assert fresh.js_errors == []
    fresh.context.close()


# --- keyboard, sign-in, accessibility and the phone layout ------------------------------------------------


def test_keyboard_only_send(fake, page):
    script_panel(fake)
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to message")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_label("Message", exact=True)).to_be_focused()
    page.keyboard.type("Why is the sky blue?")
    page.keyboard.press("Control+Enter")
    expect(page.locator(".answer-text")).to_have_text(FINAL)
    wait_done(page)
    # And again by tabbing to the Send button.
    page.get_by_label("Message", exact=True).focus()
    page.keyboard.type("Once more")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "send":
            break
    expect(page.get_by_role("button", name="Send")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator(".turn")).to_have_count(2)
    wait_done(page)


def test_a_401_shows_sign_in_and_the_key_goes_on_every_request(fake, page):
    seen: list[str | None] = []

    def gate(route):
        auth = route.request.headers.get("authorization")
        seen.append(auth)
        if auth != "Bearer pf-test-key":
            route.fulfill(
                status=401,
                content_type="application/json",
                body=json.dumps({"error": {"message": "bad key", "type": "authentication_error"}}),
            )
        else:
            route.continue_()

    page.route("**/v1/**", gate)
    page.reload()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_label("panelfuse key")).to_be_focused()
    page.keyboard.type("pf-test-key")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Sign in")).to_be_hidden()
    expect(page.get_by_label("Preset").locator("option", has_text="test")).to_have_count(1)
    assert page.evaluate("sessionStorage.getItem('panelfuse.key')") == "pf-test-key"
    script_panel(fake)
    seen.clear()
    send(page, "q")
    expect(page.locator(".answer-text")).to_have_text(FINAL)
    assert seen and all(a == "Bearer pf-test-key" for a in seen)


def test_a_late_401_for_a_request_sent_before_sign_in_does_not_ask_again(fake, page):
    """The page's first requests go out without a key; one still in flight when the user signs in
    answers 401 afterwards. That answer is about no key, not the new one: sign-in stays closed."""
    held = []

    def gate(route):
        auth = route.request.headers.get("authorization")
        if auth is None and "/v1/fusion/runs" in route.request.url:
            held.append(route)  # answered below, after sign-in
        elif auth != "Bearer pf-test-key":
            route.fulfill(status=401, content_type="application/json", body='{"error": {"message": "bad key"}}')
        else:
            route.continue_()

    page.route("**/v1/**", gate)
    page.reload()
    signin = page.get_by_role("heading", name="Sign in")
    expect(signin).to_be_visible()
    for _ in range(200):  # the history request reaches the route after the models' 401
        if held:
            break
        page.wait_for_timeout(25)
    assert len(held) == 1
    page.get_by_label("panelfuse key").fill("pf-test-key")
    page.keyboard.press("Enter")
    expect(signin).to_be_hidden()
    expect(page.locator("#history-status")).to_have_text("No runs yet.")
    with page.expect_request_finished(lambda r: r is held[0].request):
        held[0].fulfill(status=401, content_type="application/json", body='{"error": {"message": "bad key"}}')
    # Let the page's promise chains after that response run: two macrotask turns.
    page.evaluate("new Promise((r) => setTimeout(() => setTimeout(r, 0), 0))")
    assert not signin.is_visible()
    expect(page.locator("#history-status")).to_have_text("No runs yet.")


def test_sign_in_with_a_real_key_and_see_only_its_own_history(fake, browser, tmp_path, monkeypatch):
    """Auth on for real (keys in the store): the page asks for a key, then shows only that key's runs."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from panelfuse.store import RunStore

    db = f"sqlite+aiosqlite:///{tmp_path}/runs.db"

    async def make_keys():
        store = await RunStore.open(db)
        try:
            return [await store.keys.create(name) for name in ("mine", "theirs")]
        finally:
            await store.close()

    # Playwright's sync API holds this thread's event loop: run the store work on another thread.
    with ThreadPoolExecutor(1) as pool:
        mine, theirs = pool.submit(asyncio.run, make_keys()).result()
    monkeypatch.setattr(gateway_helpers, "gateway_config", chatroom_config)
    gw = Gateway(fake, db).start()
    page = open_page(browser, gw)
    try:
        script_panel(fake)
        other = httpx.post(
            f"{gw.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {theirs.secret}"},
            json={"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "theirs"}]},
        )
        assert other.status_code == 200
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        page.get_by_label("panelfuse key").fill(mine.secret)
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", name="Sign in")).to_be_hidden()
        send(page, "mine")
        wait_done(page)
        history = page.get_by_role("complementary", name="Past runs")
        history.get_by_role("button", name="Refresh").click()
        expect(history.get_by_role("listitem")).to_have_count(1)
        expect(history).to_contain_text("mine")
        expect(history).not_to_contain_text("theirs")
        assert page.js_errors == []
    finally:
        page.context.close()
        gw.stop()


def test_a_finished_run_is_accessible_and_fits_a_phone(fake, browser, gateway):
    script_panel(
        fake,
        m2=Script(failure=Failure.HTTP, status_code=400),
        synth=Script(
            text="## Why\n\nAir scatters **short** wavelengths; see https://example.com/a-very-long-"
            "address-that-could-overflow-a-narrow-screen-if-it-did-not-wrap\n\n```\n" + "x" * 200 + "\n```"
        ),
    )
    fake.script("plain", Script(text="just one model"))
    # bypass_csp: axe is injected as an inline script, which the page's own policy (rightly) forbids.
    page = open_page(browser, gateway, bypass_csp=True)
    build_panel(page)
    page.get_by_label("Compare with one model").fill("fake/plain")
    send(page, "Why is the sky blue?")
    expect(page.locator(".turn-title .badge")).to_have_text("completed, degraded")
    expect(page.locator(".compare-col .badge")).to_have_text("ok")
    page.locator(".breakdown-details summary").click()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chatroom-desktop.png"), full_page=True)
    page.add_script_tag(path=str(AXE))
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 844})
        results = page.evaluate("axe.run()")
        bad = [
            (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
            for v in results["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        assert bad == [], f"axe at {width}px: {bad}"
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(ARTIFACTS / "chatroom-phone.png"), full_page=True)
    assert page.js_errors == []
    page.context.close()


def test_web_citations_from_the_panel_reach_the_page(fake, browser, tmp_path, monkeypatch):
    """A member searches the local corpus through the tool loop; the document it read comes back as a
    url_citation annotation and the page lists it under Sources."""
    from panelfuse.config import ToolsConfig
    from panelfuse.tools.corpus import build_index

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "rayleigh.md").write_text("# Rayleigh scattering\n\nShort wavelengths scatter more in air.\n")
    index = tmp_path / "corpus.db"
    build_index(docs, index)

    def config_with_corpus(fake):
        cfg = chatroom_config(fake)
        cfg.tools = ToolsConfig(corpus_index=str(index))
        return cfg

    monkeypatch.setattr(gateway_helpers, "gateway_config", config_with_corpus)
    gw = Gateway(fake, f"sqlite+aiosqlite:///{tmp_path}/runs.db").start()
    page = open_page(browser, gw)
    try:
        script_panel(fake)
        fake.script(
            "m1",
            Script(tool_calls=[{"name": "web_search", "arguments": {"query": "rayleigh"}}]),
            Script(text="Short wavelengths scatter more [1]."),
        )
        build_panel(page)
        send(page, "Why is the sky blue?")
        wait_done(page)
        sources = page.locator(".turn").last.locator(".sources")
        expect(sources).to_contain_text("Sources")
        expect(sources).to_contain_text("rayleigh")
        searched = json.dumps(fake.requests_for("m1")[-1].body["messages"])
        assert "untrusted_data" in searched and "Short wavelengths scatter more in air" in searched
        assert page.js_errors == []
    finally:
        page.context.close()
        gw.stop()
