"""The chatroom's Experiments view in headless Chromium: the list of experiments, one report with its
numbers (per arm, the differences, the projected monthly cost), accessible and fitting a phone."""

from __future__ import annotations

import httpx
import pytest

import gateway_helpers
from experiment_rows import DEFINITION, NAME, make_rows, record_sync
from gateway_helpers import Gateway
from test_chatroom import ARTIFACTS, AXE, chatroom_config, open_page
from test_chatroom import browser as browser  # the module's one Chromium, the chatroom tests' fixture

try:
    from playwright.sync_api import expect
except ImportError:  # the dev extra is not installed
    expect = None

if expect is not None:
    expect.set_options(timeout=15_000)


@pytest.fixture
def gateway(fake, tmp_path, monkeypatch):
    url = f"sqlite+aiosqlite:///{tmp_path}/runs.db"
    record_sync(url, make_rows(n=80), {NAME: DEFINITION, "empty-one": DEFINITION})
    monkeypatch.setattr(gateway_helpers, "gateway_config", chatroom_config)
    gw = Gateway(fake, url).start()
    yield gw
    gw.stop()


def usd(x: float) -> str:
    """The page's money format for amounts of a dollar or more."""
    return f"-${-x:,.2f}" if x < 0 else f"${x:,.2f}"


def test_the_experiments_view_lists_and_shows_a_report(browser, gateway) -> None:
    truth = httpx.get(f"{gateway.url}/v1/experiments/{NAME}/report", params={"monthly_requests": 2_000_000}).json()
    # bypass_csp: axe is injected as an inline script, which the page's own policy (rightly) forbids.
    page = open_page(browser, gateway, bypass_csp=True)
    page.get_by_role("button", name="Experiments").click()
    view = page.get_by_role("region", name="Experiments", exact=True)
    expect(view).to_be_visible()
    expect(page.locator("main")).to_be_hidden()
    items = view.get_by_role("list", name="Experiments").get_by_role("button")
    expect(items).to_have_count(2)
    expect(items.first).to_contain_text(NAME)
    expect(items.first).to_contain_text("running")
    expect(items.first).to_contain_text("arms: single, vote, fusion")

    items.first.click()
    report = page.locator("#experiment-report")
    expect(report.get_by_role("heading", name=f"Experiment {NAME}")).to_be_focused()
    arms = report.get_by_role("table", name="Per arm")
    headers = arms.locator("thead th")
    expect(headers).to_have_text(["Figure", "single control", "vote shadow", "fusion primary"])
    for arm in truth["arms"]:
        cells = arms.locator(f'td[data-arm="{arm["arm"]}"]')
        expect(cells.nth(0)).to_have_text(str(arm["requests"]))
        expect(cells.nth(5)).to_have_text(f"{arm['failure_rate'] * 100:.1f}% ({arm['failed']})")
        expect(cells.nth(8)).to_have_text(str(arm["skipped"]))
    diffs = report.get_by_role("table", name="Arm − single, with 95% bootstrap intervals")
    expect(diffs.locator("tbody tr")).to_have_count(len(truth["differences"]))
    fusion_cost = next(d for d in truth["differences"] if d["arm"] == "fusion" and d["metric"] == "latency_p50_ms")
    row = diffs.locator('tr[data-arm="fusion"][data-metric="latency_p50_ms"]')
    expect(row.locator("td").first).to_contain_text(f"+{fusion_cost['difference'] / 1000:.1f} s")
    expect(row.locator("td").first).to_contain_text("interval excludes 0")
    expect(report).to_contain_text("Bold: the interval excludes 0")
    expect(report).not_to_contain_text("null")

    # The caller's own volume: the monthly cost is projected at it.
    expect(report).to_contain_text("source: observed")
    report.get_by_label("Your monthly requests").fill("2000000")
    report.get_by_role("button", name="Project").click()
    expect(report).to_contain_text("source: option")
    monthly = report.get_by_role("table", name="Projected monthly cost")
    for m in truth["monthly"]:
        expect(monthly.locator(f'tr[data-arm="{m["arm"]}"] .monthly-cost')).to_have_text(usd(m["monthly_cost"]))

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "experiments-desktop.png"), full_page=True)
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
    page.screenshot(path=str(ARTIFACTS / "experiments-phone.png"), full_page=True)

    items.nth(1).click()  # an experiment with no requests yet
    expect(report.get_by_role("heading", name="Experiment empty-one")).to_be_focused()
    expect(report).to_contain_text("No differences yet")
    expect(report).to_contain_text("source: none")
    expect(report.get_by_role("table", name="Per arm").locator('td[data-arm="single"]').first).to_have_text("0")

    page.get_by_role("button", name="Back to the chatroom").click()
    expect(page.locator("main")).to_be_visible()
    assert page.js_errors == []
    page.context.close()


def test_a_key_that_is_not_the_admin_is_told_so(browser, gateway) -> None:
    page = open_page(browser, gateway)
    page.route(
        "**/v1/experiments",
        lambda route: route.fulfill(
            status=403,
            content_type="application/json",
            body='{"error": {"message": "managing experiments needs the admin key", "type": "permission_error"}}',
        ),
    )
    page.get_by_role("button", name="Experiments").click()
    expect(page.locator("#experiments-status")).to_have_text("Experiments are for the admin key.")
    assert page.js_errors == []
    page.context.close()
