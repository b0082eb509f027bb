"""FeedReport.merge: the one merge a feed_records run (per chunk of hours) and a live run (per
tick) use. The live run once merged by hand and dropped incomplete fetches; these tests fail if a
field is forgotten again or the live run stops reporting what its fetches left incomplete."""

import dataclasses
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

from crunch_assets.defs.feed.assets import MAX_REPORTED_DEFECTS, FeedReport
from crunch_assets.defs.live_window.window import LiveWindow
from crunch_assets.defs.predictions.assets import CycleReport
from crunch_assets.defs.scores.assets import SettleReport

HOUR_START = datetime(2026, 11, 2, 10, tzinfo=timezone.utc)


def _report(tag: str) -> FeedReport:
    report = FeedReport(fetched=3, written=2, corrected=1, pages=1)
    report.skipped_by_reason["duplicate"] += 1
    report.errors[f"BTCUSD {tag}"] = "HTTP 502"
    report.incomplete.append(f"BTCUSD {tag} .. (page limit)")
    report.observed_by_hour[HOUR_START] += 2
    report.defect_rows.append({"subject": "BTCUSD", "tag": tag})
    report.defective_fetches.append(f"refetched {tag}")
    report.defects_accepted.append(f"accepted {tag}")
    return report


def test_merge_carries_every_field():
    total = FeedReport()
    total.merge(_report("a"))
    total.merge(_report("b"))
    for field in dataclasses.fields(FeedReport):
        value = getattr(total, field.name)
        assert value, f"FeedReport.merge drops {field.name}"
    assert (total.fetched, total.written, total.corrected, total.pages) == (6, 4, 2, 2)
    assert total.skipped_by_reason == {"duplicate": 2} and total.observed_by_hour == {HOUR_START: 4}
    assert total.incomplete == ["BTCUSD a .. (page limit)", "BTCUSD b .. (page limit)"]
    assert set(total.errors) == {"BTCUSD a", "BTCUSD b"}


def test_merge_keeps_only_the_first_reported_defects():
    total = FeedReport()
    for index in range(MAX_REPORTED_DEFECTS + 5):
        total.merge(_report(str(index)))
    assert len(total.defect_rows) == MAX_REPORTED_DEFECTS and total.defect_rows[0]["tag"] == "0"


def test_a_live_run_reports_an_incomplete_fetch(monkeypatch):
    """Two ticks of a live window whose first fetch was cut short: the window's feed metadata (what
    report_window attaches to the hour's feed_records materialization) names it."""
    fetches = iter([_report("first tick"), FeedReport(fetched=1, written=1)])
    tick_globals = LiveWindow.tick.__globals__  # the live window's own module, wherever it lives
    monkeypatch.setitem(tick_globals, "ingest", lambda *args, **kwargs: next(fetches))
    monkeypatch.setitem(tick_globals, "run_cycles", lambda *args, **kwargs: CycleReport())
    monkeypatch.setitem(tick_globals, "settle", lambda *args, **kwargs: SettleReport())
    spec = SimpleNamespace(slug="btc_updown", max_horizon_seconds=3600)
    database = SimpleNamespace(competition=lambda slug: None, feeds=lambda: None)
    live = LiveWindow(spec, None, None, None, None, SimpleNamespace(call_timeout_seconds=5.0), database, None, None)
    monkeypatch.setattr(live, "roll_up", lambda as_of: None)
    live.tick(HOUR_START, HOUR_START + timedelta(minutes=5))
    live.tick(HOUR_START, HOUR_START + timedelta(minutes=6))
    metadata = live.progress.feed.metadata()
    assert metadata["incomplete_fetches"] == ["BTCUSD first tick .. (page limit)"]
    assert metadata["feed_errors"] == {"BTCUSD first tick": "HTTP 502"}
    assert metadata["records_fetched"] == 4 and live.progress.ticks == 2
