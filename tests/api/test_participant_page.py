"""The participant page in a real headless browser (Debian's chromium driven by Playwright), judged
as a participant who checks it daily: every figure is the API's, the score says which way is
better, windows and dates read the same everywhere, per-scope standings, a chart with axes and
gaps, checkpoints a page at a time with the paid ones reachable, each model's status, rank change
and lifetime rewards, proofs worked through, an HTML 404; a long and a non-ASCII model id, an empty
competition and 200 models. The competitions: tests/api/page_data.py.

Each test takes screenshots of what it checks (into its tmp dir, and into $CRUNCH_SCREENSHOTS_DIR
when set: scripts/screenshots regenerates docs/screenshots/ that way); the assertions are the
expectations those screenshots are compared to: texts, elements and layout facts."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest

from crunch_assets.payouts import frac64_to_percent
from tests.api import page_data

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}
DATE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC")
OTHER_DATES = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}|\d{1,2}/\d{1,2}/\d{2,4}|(?<![\d-])\d{2}-\d{2} \d{2}:\d{2}")


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: scripts/test installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield instance
        instance.close()


class Shots:
    """Screenshots of a test: into its tmp dir, and into $CRUNCH_SCREENSHOTS_DIR when set."""

    def __init__(self, page, tmp_path: Path):
        self.page, self.tmp_path = page, tmp_path
        configured = os.environ.get("CRUNCH_SCREENSHOTS_DIR")
        self.published = Path(configured) if configured else None

    def take(self, name: str, full_page: bool = True, locator=None) -> None:
        targets = [self.tmp_path / f"{name}.png"] + ([self.published / f"{name}.png"] if self.published else [])
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            if locator is not None:
                locator.screenshot(path=str(target))
            else:
                self.page.screenshot(path=str(target), full_page=full_page)


@pytest.fixture
def page(browser, tmp_path, request):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    yield page
    page.screenshot(path=str(tmp_path / f"{request.node.name}-end.png"), full_page=True)
    context.close()


@pytest.fixture
def shots(page, tmp_path):
    return Shots(page, tmp_path)


def _percent_text(reward_pct: int) -> str:
    return f"{frac64_to_percent(reward_pct):g} %"


def _no_horizontal_overflow(page) -> None:
    width, viewport = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= viewport, f"the page is {width} px wide in a {viewport} px window"


def _boxes_disjoint(boxes: list[dict]) -> bool:
    ordered = sorted(boxes, key=lambda b: b["x"])
    return all(a["x"] + a["width"] <= b["x"] + 0.5 for a, b in zip(ordered, ordered[1:]))


# --- the default competition: the API's numbers --------------------------------------------------

def test_page_shows_the_api_numbers_and_draws_the_chart(pages_api, page, shots):
    server, client = pages_api
    board = client.get("/competitions/btc_updown/leaderboard").json()
    checkpoints = client.get("/competitions/btc_updown/checkpoints").json()["checkpoints"]
    series = client.get("/competitions/btc_updown/models/mean_reversion/scores").json()
    response = page.goto(server.url + "/")
    assert response.status == 200
    shots.take("page-btc_updown")
    rows = page.locator("#leaderboard tbody tr")
    assert rows.count() == len(board["entries"]) == 3
    for index, entry in enumerate(board["entries"]):
        row = rows.nth(index)
        assert row.get_attribute("data-model") == entry["model_id"]
        assert row.locator(".rank").inner_text() == str(entry["rank"])
        for window in ("score_recent", "score_steady", "score_anchor"):
            assert row.locator(f'td.window[data-window="{window}"]').inner_text() == f"{entry['windows'][window]:.6f}"
        assert row.locator("td.coverage").inner_text() == f"{entry['coverage']['score_recent'] * 100:.1f} %"
        assert row.locator(".projected").inner_text() == _percent_text(entry["payout"]["reward_pct"])
        assert row.locator(".status").inner_text() == "running"
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
    lines = page.locator("#chart svg path.series")
    assert lines.count() == 3
    line = page.locator('#chart svg path[data-model="mean_reversion"]')
    assert int(line.get_attribute("data-points")) == len(series["series"]["mean_reversion"]) == 48
    assert line.get_attribute("data-segments") == "1"  # 48 hours in a row: one unbroken line
    box = line.bounding_box()
    assert box is not None and box["width"] > 600 and box["height"] > 10


def test_explain_my_reward(pages_api, page):
    server, client = pages_api
    checkpoints = client.get("/competitions/btc_updown/checkpoints").json()["checkpoints"]
    page.goto(server.url + "/")
    page.locator("#explain a", has_text="trend_following").click()
    page.wait_for_url("**/page/btc_updown/models/trend_following")
    assert "trend_following" in page.locator("h1").inner_text()
    entry = next(e for e in client.get("/competitions/btc_updown/leaderboard").json()["entries"]
                 if e["model_id"] == "trend_following")
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
        assert f"scored {breakdown['breakdown']['scored']}" in text
    assert breakdown["breakdown"]["rule"] in page.locator("#rule").inner_text()  # the rule, said once
    assert page.locator('#chart svg path[data-model="trend_following"]').count() == 1


def test_it_says_what_the_score_is_which_way_is_better_with_readable_windows_and_one_date_format(pages_api, page, shots):
    server, _ = pages_api
    expectations = {"/": ("Brier skill", "higher is better", ["last 24 h", "last 3 days", "last 7 days"]),
                    "/page/crypto_density": ("CRPS of the predicted return density", "lower is better",
                                             ["last 6 h", "last 24 h", "last 7 days"])}
    for path, (score, direction, windows) in expectations.items():
        page.goto(server.url + path)
        explained = page.locator("#score-explained").inner_text()
        assert score in explained and direction in explained, explained
        headers = [page.locator(f'#leaderboard th[data-window="{name}"]').inner_text().split("\n")[0].strip()
                   for name in [h.get_attribute("data-window") for h in page.locator("#leaderboard th[data-window]").all()]]
        assert [h.replace(" ranks", "") for h in headers] == windows
        assert page.locator("#leaderboard th .ranks").count() == 1  # the window that ranks is marked
        text = page.locator("body").inner_text()
        assert DATE.search(text) and not OTHER_DATES.search(text), OTHER_DATES.search(text)
        ticks = [t.text_content() for t in page.locator("#chart svg text.x-tick").all()]
        assert ticks and all(re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", t) for t in ticks), ticks
    shots.take("score-direction-crypto_density", full_page=False)


# --- crypto_density: scopes and the gap ----------------------------------------------------------

def test_per_scope_standings(pages_api, page, shots):
    server, client = pages_api
    page.goto(server.url + "/page/crypto_density")
    scopes = page.locator("#scopes details.scope")
    assert scopes.count() == 6
    for index in range(6):
        details = scopes.nth(index)
        key = details.get_attribute("data-scope")
        details.evaluate("element => { element.open = true; }")
        ranked = client.get("/competitions/crypto_density/leaderboard", params={"scope": key}).json()["entries"]
        rows = details.locator("tbody tr")
        assert [rows.nth(i).get_attribute("data-model") for i in range(rows.count())] == [e["model_id"] for e in ranked]
        for i, entry in enumerate(ranked):
            assert rows.nth(i).locator('td.window[data-window="crps_24h"]').inner_text() == \
                f"{entry['windows']['crps_24h']:.6f}"
        values = [e["windows"]["crps_24h"] for e in ranked]
        assert values == sorted(values)  # CRPS: lower first
    assert "short" in scopes.nth(0).locator("summary").inner_text() and "5 min ahead" in scopes.nth(0).inner_text()
    shots.take("scopes-crypto_density", locator=page.locator("#scopes"))
    page.goto(server.url + "/")
    assert page.locator("#scopes").count() == 0  # one scope: the leaderboard is its standing


def test_the_chart_shows_a_hole_as_a_gap_and_coverage_counts_it(pages_api, page, shots):
    """crypto_density ran 10 hours, then nothing for 6, then 8 hours: the lines break at the hole,
    the hole is shaded and labelled, and coverage is 18 of 24 hours, not 100 %."""
    server, client = pages_api
    series = client.get("/competitions/crypto_density/models/momentum/scores").json()
    counted = [datetime.fromisoformat(h) for h in series["hours_with_cycles"]]
    hole = [page_data.DENSITY_HOLE[0] + timedelta(hours=h) for h in range(6)]
    assert len(counted) == 18 and not set(hole) & set(counted)
    page.goto(server.url + "/page/crypto_density")
    chart = page.locator("#chart")
    shots.take("chart-gap-crypto_density", locator=chart)
    gap = chart.locator('svg rect.gap[data-hours="6"]')
    assert gap.count() == 1 and gap.get_attribute("data-start") == hole[0].isoformat()
    assert chart.locator("svg text.gap-label").count() >= 1
    coverage = chart.locator("#chart-coverage").inner_text()
    assert "18 of 24 hours" in coverage and "(75.0 %)" in coverage and "(6 h)" in coverage, coverage
    gap_box = gap.bounding_box()
    for path in chart.locator("svg path.series").all():
        assert path.get_attribute("data-segments") == "2", path.get_attribute("data-model")
        # no drawn segment crosses the hole: every "L" continues from a point left of it or starts right of it
        points = re.findall(r"([ML])([\d.]+),([\d.]+)", path.get_attribute("d"))
        svg = chart.locator("svg.score-chart").bounding_box()
        scale = svg["width"] / 1000
        for (_, x0, _), (command, x1, _) in zip(points, points[1:]):
            if command == "L":
                left, right = svg["x"] + float(x0) * scale, svg["x"] + float(x1) * scale
                assert right <= gap_box["x"] + 1 or left >= gap_box["x"] + gap_box["width"] - 1
    for item in chart.locator("#legend li").all():
        assert item.locator(".hours").inner_text() == "18 of 24 h"
    # the leaderboard says it too: its coverage is of the cycles that ran, and 6 of its 24 hours had none
    gaps = page.locator("#window-gaps").inner_text()
    assert "18 of 24 hours" in gaps and "(75.0 %)" in gaps and "2025-01-07 10:00 UTC – 2025-01-07 16:00 UTC (6 h)" in gaps
    assert all(cell.inner_text() == "100.0 %" for cell in page.locator("#leaderboard td.coverage").all())
    # readable: full width, gridlines, ticks that do not overlap
    main_width = page.locator("main").bounding_box()["width"]
    assert chart.locator("svg.score-chart").bounding_box()["width"] >= 0.9 * main_width
    assert chart.locator("svg line.grid").count() >= 6
    y_ticks = chart.locator("svg text.y-tick").all()
    assert len(y_ticks) >= 3
    x_ticks = chart.locator("svg text.x-tick").all()
    assert len(x_ticks) >= 3 and _boxes_disjoint([t.bounding_box() for t in x_ticks])
    assert all(t.bounding_box()["x"] >= 0 and t.bounding_box()["x"] + t.bounding_box()["width"] <= VIEWPORT["width"]
               for t in x_ticks)
    assert "lower is better" in chart.locator("svg.score-chart").get_attribute("aria-label")


# --- checkpoints ---------------------------------------------------------------------------------

def test_checkpoints_a_page_at_a_time_the_paid_ones_reachable_the_rule_once(pages_api, page, shots):
    server, client = pages_api
    ours = client.get("/competitions/crowd/checkpoints", params={"limit": 200}).json()["checkpoints"]
    assert len(ours) == 29
    page.goto(server.url + "/page/crowd")
    assert page.locator("#rule").count() == 1  # the rule, once for the list
    assert page.locator("section.checkpoint").count() == 10
    assert [int(s.get_attribute("data-checkpoint")) for s in page.locator("section.checkpoint").all()] == \
        [c["id"] for c in ours[:10]]
    assert page.locator("section.checkpoint .own-rule").count() == 0
    assert page.locator("section.checkpoint .tx-hash").count() == 0  # none paid among the newest
    # paid ones: through the status tab ...
    page.locator('.tabs a[data-status="PAID"]').click()
    page.wait_for_url("**status=PAID**")
    paid = page.locator("section.checkpoint")
    assert paid.count() == page_data.PAID_CHECKPOINTS
    for section in paid.all():
        assert section.locator(".status").inner_text() == "PAID"
        assert section.locator(".tx-hash").inner_text() == page_data.TX_HASH
    shots.take("checkpoints-paid-crowd", locator=page.locator("#checkpoints"))
    # ... and by paging back to the oldest
    page.goto(server.url + "/page/crowd")
    seen = []
    for expected_page in (1, 2, 3):
        assert f"page {expected_page} of 3" in page.locator(".pager").inner_text()
        seen += [int(s.get_attribute("data-checkpoint")) for s in page.locator("section.checkpoint").all()]
        if expected_page < 3:
            page.locator('.pager a[rel="next"]').click()
            page.wait_for_load_state()
    assert seen == [c["id"] for c in ours]
    oldest = page.locator(f'section.checkpoint[data-checkpoint="{ours[-1]["id"]}"]')
    assert oldest.locator(".tx-hash").inner_text() == page_data.TX_HASH
    # each checkpoint lists the paid models; the rest are counted, not listed 190 times
    newest = client.get(f"/competitions/crowd/checkpoints/{ours[0]['id']}").json()["reward_split"]
    page.goto(server.url + "/page/crowd")
    first = page.locator("section.checkpoint").first
    paid_rows = [r for r in newest if r["reward_pct"]]
    assert first.locator("tbody tr").count() == len(paid_rows) == 10
    assert f"{len(newest) - 10} more model(s) ranked" in first.locator(".more-ranked").inner_text()


def test_a_proof_is_clickable_and_worked_through(pages_api, page, shots):
    server, client = pages_api
    page.goto(server.url + "/page/btc_updown/models/trend_following")
    link = page.locator("section.explain").first.locator("a.proof-page")
    checkpoint_id = page.locator("section.explain").first.get_attribute("data-checkpoint")
    api_link = page.locator("section.explain").first.locator("a.proof-json").get_attribute("href")
    link.click()
    page.wait_for_url("**/proof?**")
    shots.take("proof-worked-example")
    proof = client.get(api_link).json()
    assert proof["verified"] is True
    leaf_json = page.locator("#leaf-json").inner_text()
    assert hashlib.sha256(b"\x00" + leaf_json.encode()).hexdigest() == proof["leaf_hash"] == \
        page.locator("#leaf-hash").inner_text()
    made = [m.inner_text() for m in page.locator("#proof-steps li.step code.made").all()]
    assert len(made) == len(proof["proof"]) and made[-1] == proof["merkle_root"]
    current = proof["leaf_hash"]
    for step, shown in zip(proof["proof"], made):  # redo each step as the page says to
        left, right = (step["hash"], current) if step["side"] == "left" else (current, step["hash"])
        current = hashlib.sha256(b"\x01" + bytes.fromhex(left) + bytes.fromhex(right)).hexdigest()
        assert current == shown
    assert page.locator("#verdict").inner_text() == "equals"
    root = client.get(f"/competitions/btc_updown/checkpoints/{checkpoint_id}").json()["merkle_root"]
    assert page.locator("#root").inner_text() == root
    # the worked example is linked from the rule text too
    page.goto(server.url + "/page/btc_updown/models/trend_following")
    assert page.locator("#worked-example").get_attribute("href") == link.get_attribute("href")


def test_an_unknown_model_or_competition_is_an_html_404(pages_api, page, shots):
    server, client = pages_api
    for path, text in (("/page/btc_updown/models/nobody", "No model 'nobody' in btc_updown"),
                       ("/page/other_comp", "No competition 'other_comp'"),
                       ("/page/btc_updown/models/nobody/checkpoints/1/proof?cycle_at=2025-01-07T01:00:00%2B00:00",
                        "no score of nobody")):
        response = page.goto(server.url + path)
        assert response.status == 404 and response.headers["content-type"].startswith("text/html"), path
        assert text in page.locator("#not-found").inner_text()
        assert page.locator("#switcher a:not([href='/docs'])").count() == 4  # still a page to navigate from
    shots.take("not-found")
    assert client.get("/page/btc_updown/models/nobody").headers["content-type"].startswith("text/html")


# --- per model -----------------------------------------------------------------------------------

def test_each_model_shows_its_status_rank_change_and_lifetime_rewards(pages_api, page, shots):
    server, client = pages_api
    checkpoints = client.get("/competitions/crowd/checkpoints", params={"limit": 200}).json()["checkpoints"]
    lifetime = {}
    for checkpoint in checkpoints:
        for split in checkpoint["reward_split"]:
            lifetime[split["model_id"]] = lifetime.get(split["model_id"], 0) + split["reward_pct"]
    now = client.get("/competitions/crowd/leaderboard").json()["entries"]
    then = client.get("/competitions/crowd/leaderboard",
                      params={"as_of": checkpoints[0]["period_end"]}).json()["entries"]
    rank_then = {e["model_id"]: e["rank"] for e in then}
    page.goto(server.url + "/page/crowd")
    moved = 0
    for entry in now[:40]:
        row = page.locator(f'#leaderboard tbody tr[data-model="{entry["model_id"]}"]')
        change = rank_then[entry["model_id"]] - entry["rank"]
        moved += change != 0
        expected = "=" if change == 0 else f"{'▲' if change > 0 else '▼'} {abs(change)}"
        assert row.locator(".change-cell").inner_text() == expected
        assert row.locator(".lifetime").inner_text() == _percent_text(lifetime.get(entry["model_id"], 0))
    assert moved >= 10  # the comparison is not vacuous
    quarantined = page.locator(f'#leaderboard tbody tr[data-model="{page_data.QUARANTINED_ID}"] .status')
    assert quarantined.inner_text() == "quarantined"
    shots.take("leaderboard-crowd", full_page=False)

    page.goto(server.url + f"/page/crowd/models/{page_data.FAILING_ID}")
    shots.take("model-page-flaky")
    assert "failed 10" in page.locator("#failed-cycles").inner_text()
    assert page_data.PUBLIC_FAILING_REASON in page.locator("#last-error").inner_text()
    assert "model.py" not in page.locator("body").inner_text()  # where in the participant's code: never shown
    entry = next(e for e in now if e["model_id"] == page_data.FAILING_ID)
    change = rank_then[page_data.FAILING_ID] - entry["rank"]
    assert page.locator("#rank-change .change").inner_text() == ("=" if change == 0 else
                                                                 f"{'▲' if change > 0 else '▼'} {abs(change)}")
    assert _percent_text(lifetime[page_data.FAILING_ID]) in page.locator("#lifetime").inner_text()

    page.goto(server.url + f"/page/crowd/models/{page_data.EMBARGOED_ID}")
    last_error = page.locator("#last-error").inner_text()
    assert "shown once the cycle resolves" in last_error and "ValueError" not in last_error
    page.goto(server.url + f"/page/crowd/models/{page_data.QUARANTINED_ID}")
    state = page.locator("#model-status").inner_text()
    assert "quarantined" in state and "not called until" in state


# --- hard cases: ids, emptiness, crowds ----------------------------------------------------------

def test_a_long_and_a_non_ascii_model_id(pages_api, page, shots):
    server, client = pages_api
    page.goto(server.url + "/page/crowd")
    _no_horizontal_overflow(page)
    long_row = page.locator(f'#leaderboard tbody tr[data-model="{page_data.LONG_ID}"]')
    cell = long_row.locator("td.model")
    assert cell.inner_text().replace("\n", "") == page_data.LONG_ID
    assert cell.bounding_box()["width"] <= 22 * 16 + 20  # it wraps, within its column
    table = page.locator("#leaderboard")
    assert table.bounding_box()["width"] <= page.locator("main").bounding_box()["width"] + 1
    accented = page.locator(f'#leaderboard tbody tr[data-model="{page_data.NON_ASCII_ID}"] td.model a')
    assert accented.inner_text() == "Модель αβγ (Zürich)"
    assert accented.get_attribute("href") == f"/page/crowd/models/{quote(page_data.NON_ASCII_ID, safe='')}"
    accented.scroll_into_view_if_needed()
    shots.take("ids-long-and-non-ascii", full_page=False)
    accented.click()
    page.wait_for_load_state()
    assert page.locator("h1").inner_text().startswith("Модель αβγ (Zürich)")
    assert page.locator("#model-id code").inner_text() == page_data.NON_ASCII_ID
    page.goto(server.url + f"/page/crowd/models/{quote(page_data.LONG_ID)}")
    assert page.locator("#model-id code").inner_text() == page_data.LONG_ID
    _no_horizontal_overflow(page)
    legend = page.locator("#legend .label").first
    assert legend.inner_text().endswith("…") and legend.get_attribute("title") == page_data.LONG_ID


def test_an_empty_competition(pages_api, page, shots):
    server, client = pages_api
    response = page.goto(server.url + "/page/empty")
    assert response.status == 200
    shots.take("page-empty")
    assert page.locator("#switcher a.current").inner_text() == "empty"
    assert "No leaderboard yet" in page.locator("#leaderboard-empty").inner_text()
    assert page.locator("#chart svg").get_attribute("aria-label") == "no scores yet"
    assert "No checkpoint yet" in page.locator("#checkpoints-empty").inner_text()
    assert "No model has registered yet" in page.locator("#explain").inner_text()
    assert client.get("/reports/checkpoints").status_code == 200
    assert client.get("/competitions/empty/reports/checkpoints").json() == []
    assert client.get("/competitions/empty/reports/leaderboard").json() == []
    _no_horizontal_overflow(page)


def test_two_hundred_models(pages_api, page, shots):
    server, client = pages_api
    page.goto(server.url + "/page/crowd")
    rows = page.locator("#leaderboard tbody tr")
    assert rows.count() == len(client.get("/competitions/crowd/leaderboard").json()["entries"]) == 201
    # the chart draws the ten best-ranked, and says so
    order = [e["model_id"] for e in client.get("/competitions/crowd/leaderboard").json()["entries"]]
    drawn = [p.get_attribute("data-model") for p in page.locator("#chart svg path.series").all()]
    assert drawn == order[:10]
    assert "The 10 best-ranked of 201 models are drawn" in page.locator("#chart-limited").inner_text()
    assert [li.get_attribute("data-model") for li in page.locator("#legend li").all()] == order[:10]
    _no_horizontal_overflow(page)
    shots.take("chart-crowd", locator=page.locator("#chart"))
    # the switcher: every competition, the current one marked, each one a click away
    links = page.locator("#switcher a:not([href='/docs'])")
    assert [a.inner_text() for a in links.all()] == ["btc_updown", "crowd", "crypto_density", "empty"]
    page.locator("#switcher a", has_text="crypto_density").click()
    page.wait_for_url("**/page/crypto_density")
    assert page.locator("#switcher a.current").inner_text() == "crypto_density"
    assert page.locator("h1").inner_text() == "crypto_density"


# --- the content security policy, enforced by the browser ----------------------------------------

RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener('securitypolicyviolation',
    e => window.__violations.push(e.violatedDirective + ' ' + (e.blockedURI || 'inline')));
"""


def _offline(page, server_url: str) -> list[str]:
    """Loopback passes, anything else is refused (and listed: the returned list)."""
    refused: list[str] = []

    def handle(route):
        url = route.request.url
        if url.startswith(server_url) or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            refused.append(url)
            route.abort()

    page.route("**/*", handle)
    page.add_init_script(RECORD_VIOLATIONS)
    return refused


def test_the_pages_keep_their_content_security_policy(read_api, page):
    """The page and the model page render with no violation (the style is a file, the bars are
    SVG); an inline script, had one got in, would not run."""
    server, _ = read_api
    _offline(page, server.url)
    for path in ("/", "/page/btc_updown/models/mean_reversion", "/page/btc_updown/models/nobody"):
        response = page.goto(server.url + path)
        assert response.status in (200, 404) and "default-src 'self'" in response.headers["content-security-policy"]
        assert page.evaluate("getComputedStyle(document.querySelector('nav')).display") == "flex"
        assert page.evaluate("window.__violations") == [], path
    page.goto(server.url + "/")
    bar = page.locator("section.checkpoint svg.bar rect").first
    assert float(bar.get_attribute("width")) > 0 and bar.bounding_box()["width"] > 0
    page.evaluate("() => { const s = document.createElement('script'); s.textContent = 'window.__ran = true';"
                  " document.body.appendChild(s); }")
    assert page.evaluate("window.__ran === undefined")
    assert any(v.startswith("script-src") for v in page.evaluate("window.__violations"))


def test_the_docs_render_offline_under_their_own_policy(read_api, page):
    """Swagger UI and ReDoc render the API's operations with no network but the API's own origin
    (their files are the API's), and nothing is refused by their policy."""
    server, client = read_api
    refused = _offline(page, server.url)
    operations = len([op for methods in client.get("/openapi.json").json()["paths"].values() for op in methods])
    page.goto(server.url + "/docs")
    page.locator(".swagger-ui .info .title").wait_for()
    assert "crunch" in page.locator(".swagger-ui .info .title").inner_text().lower()
    page.locator(".swagger-ui .opblock").first.wait_for()
    assert page.locator(".swagger-ui .opblock").count() == operations
    assert page.evaluate("window.__violations") == []
    page.goto(server.url + "/redoc")
    page.locator("redoc h1").first.wait_for()
    assert "crunch" in page.locator("redoc h1").first.inner_text().lower()
    assert page.locator("redoc [data-section-id^='operation/']").count() == operations
    # ReDoc's bundle hard-codes one image, its credit logo on its CDN: the policy refuses it (ReDoc
    # hides it), and nothing else is refused
    assert page.evaluate("window.__violations") in ([], ["img-src https://cdn.redoc.ly/redoc/logo-mini.svg"])
    assert page.locator("img[alt='redocly logo']").count() == 0
    assert refused == []
