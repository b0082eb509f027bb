"""The participant page in a real headless browser (Debian's chromium driven by Playwright): it
loads, shows the same numbers as the API, the chart renders, and "explain my reward" explains.
Every page is screenshotted next to the test's tmp dir (look at them when a test fails)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from crunch_assets.payouts import frac64_to_percent

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: scripts/test installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser, tmp_path, request):
    context = browser.new_context(viewport={"width": 1100, "height": 1400})
    page = context.new_page()
    yield page
    page.screenshot(path=str(tmp_path / f"{request.node.name}.png"), full_page=True)
    context.close()


def _percent_text(reward_pct: int) -> str:
    return f"{frac64_to_percent(reward_pct):g} %"


def test_page_shows_the_api_numbers_and_draws_the_chart(read_api, page):
    server, client = read_api
    board = client.get("/competitions/btc_updown/leaderboard").json()
    checkpoints = client.get("/competitions/btc_updown/checkpoints").json()["checkpoints"]
    series = client.get("/competitions/btc_updown/models/mean_reversion/scores").json()["series"]
    response = page.goto(server.url + "/")
    assert response.status == 200
    rows = page.locator("#leaderboard tbody tr")
    assert rows.count() == len(board["entries"]) == 3
    for index, entry in enumerate(board["entries"]):
        row = rows.nth(index)
        assert row.get_attribute("data-model") == entry["model_id"]
        assert row.locator(".rank").inner_text() == str(entry["rank"])
        for window in ("score_recent", "score_steady", "score_anchor"):
            shown = row.locator(f'td.window[data-window="{window}"]').inner_text()
            assert shown == f"{entry['windows'][window]:.6f}"
            assert row.locator(f'td.coverage[data-window="{window}"]').inner_text() == f"{entry['coverage'][window] * 100:.1f} %"
        assert row.locator(".projected").inner_text() == _percent_text(entry["payout"]["reward_pct"])
    sections = page.locator("section.checkpoint")
    assert sections.count() == len(checkpoints) == 2
    for index, checkpoint in enumerate(checkpoints):
        section = sections.nth(index)
        assert section.get_attribute("data-checkpoint") == str(checkpoint["id"])
        assert section.locator(".status").inner_text() == checkpoint["status"]
        for split in checkpoint["reward_split"]:
            cell = section.locator(f'tr[data-model="{split["model_id"]}"] td.reward')
            assert cell.get_attribute("data-reward-pct") == str(split["reward_pct"])
            assert cell.inner_text() == _percent_text(split["reward_pct"])
    # the chart: one rendered polyline per model, as many points as the API's series
    lines = page.locator("#chart svg polyline.series")
    assert lines.count() == 3
    line = page.locator('#chart svg polyline[data-model="mean_reversion"]')
    assert int(line.get_attribute("data-points")) == len(series["mean_reversion"]) == 48
    box = line.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 10  # really drawn, not collapsed
    assert len(line.get_attribute("points").split()) == 48


def test_explain_my_reward(read_api, page):
    server, client = read_api
    checkpoints = client.get("/competitions/btc_updown/checkpoints").json()["checkpoints"]
    page.goto(server.url + "/")
    page.locator("#explain a", has_text="trend_following").click()
    page.wait_for_url("**/page/btc_updown/models/trend_following")
    assert "trend_following" in page.locator("h1").inner_text()
    entry = next(e for e in client.get("/competitions/btc_updown/leaderboard").json()["entries"] if e["model_id"] == "trend_following")
    assert page.locator('#model-windows tr[data-window="score_recent"] td.window').inner_text() == f"{entry['value']:.6f}"
    assert f"Rank {entry['rank']} of 3" in page.locator("#current-rank").inner_text()
    explained = page.locator("section.explain")
    assert explained.count() == len(checkpoints)
    for index, checkpoint in enumerate(checkpoints):
        breakdown = client.get(f"/competitions/btc_updown/checkpoints/{checkpoint['id']}/models/trend_following/breakdown").json()
        section = explained.nth(index)
        assert section.locator(".reward").get_attribute("data-reward-pct") == str(breakdown["reward_pct"])
        text = section.inner_text()
        assert f"rank {breakdown['rank']} of 3" in text
        assert f"scored {breakdown['breakdown']['scored']}" in text and breakdown["breakdown"]["rule"] in text
    assert page.locator('#chart svg polyline[data-model="trend_following"]').count() == 1
    assert client.get("/page/btc_updown/models/nobody").status_code == 404
    assert client.get("/page/other_comp").status_code == 404


# --- the content security policy, enforced by the browser ----------------------------------------

RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener('securitypolicyviolation',
    e => window.__violations.push(e.violatedDirective + ' ' + (e.blockedURI || 'inline')));
"""
# Stand-ins for the docs' CDN files (no network here): each shows it ran.
CDN_STUBS = {
    "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js": (
        "application/javascript",
        "window.SwaggerUIBundle = function (config) {"
        " document.getElementById('swagger-ui').setAttribute('data-spec', config.url); return {}; };"
        " SwaggerUIBundle.presets = {apis: {}}; SwaggerUIBundle.SwaggerUIStandalonePreset = {};"),
    "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css": ("text/css", "#swagger-ui { color: rgb(1, 2, 3); }"),
    "https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js": (
        "application/javascript",
        "var r = document.querySelector('redoc'); r.setAttribute('data-spec', r.getAttribute('spec-url'));"
        " var s = document.createElement('style'); s.textContent = 'redoc { color: rgb(4, 5, 6); }';"
        " document.head.appendChild(s);"),
}


def _offline(page, server_url: str) -> None:
    """Loopback passes, the CDN files are stubbed, anything else is refused."""
    def handle(route):
        url = route.request.url
        if url.startswith(server_url):
            route.continue_()
        elif url.split("?")[0] in CDN_STUBS:
            content_type, body = CDN_STUBS[url.split("?")[0]]
            route.fulfill(status=200, content_type=content_type, body=body)
        elif url.startswith("https://fonts.googleapis.com/"):
            route.fulfill(status=200, content_type="text/css", body="")
        else:
            route.abort()

    page.route("**/*", handle)
    page.add_init_script(RECORD_VIOLATIONS)


def test_the_pages_keep_their_content_security_policy(read_api, page):
    """The page and the model page render with no violation (the style is a file, the bars are
    SVG); an inline script, had one got in, would not run."""
    server, _ = read_api
    _offline(page, server.url)
    for path in ("/", "/page/btc_updown/models/mean_reversion"):
        response = page.goto(server.url + path)
        assert response.status == 200 and "default-src 'self'" in response.headers["content-security-policy"]
        assert page.evaluate("getComputedStyle(document.querySelector('table')).borderCollapse") == "collapse"
        assert page.evaluate("window.__violations") == [], path
    page.goto(server.url + "/")
    bar = page.locator("section.checkpoint svg.bar rect").first
    assert float(bar.get_attribute("width")) > 0 and bar.bounding_box()["width"] > 0
    page.evaluate("() => { const s = document.createElement('script'); s.textContent = 'window.__ran = true';"
                  " document.body.appendChild(s); }")
    assert page.evaluate("window.__ran === undefined")
    assert any(v.startswith("script-src") for v in page.evaluate("window.__violations"))


def test_the_docs_run_under_their_own_policy(read_api, page):
    """Swagger UI's inline script runs (its hash is allowed) with its CDN files; ReDoc runs and
    writes its styles; nothing is refused on either page."""
    server, _ = read_api
    _offline(page, server.url)
    page.goto(server.url + "/docs")
    assert page.locator("#swagger-ui").get_attribute("data-spec") == "/openapi.json"
    assert page.evaluate("getComputedStyle(document.getElementById('swagger-ui')).color") == "rgb(1, 2, 3)"
    assert page.evaluate("window.__violations") == []
    page.goto(server.url + "/redoc")
    assert page.locator("redoc").get_attribute("data-spec") == "/openapi.json"
    assert page.evaluate("getComputedStyle(document.querySelector('redoc')).color") == "rgb(4, 5, 6)"
    assert page.evaluate("window.__violations") == []
