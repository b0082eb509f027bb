"""Feed archive (daily Parquet files) and retention, on real BTC/USD candles stored by the feed
asset from the CSV replay feed."""

import csv
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import dagster as dg
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from competitions.btc_updown.definitions import SPEC, build_definitions
from crunch_assets.keys import ChainKeys
from crunch_assets.defs.feed_maintenance.assets import (
    archive_schema,
    archive_path,
    build_feed_maintenance,
    read_archive,
    retention_cutoff,
)
from crunch_assets.partitions import build_partitions
from crunch_assets.replay import RANGE_END_TAG, RANGE_START_TAG, chain_assets
import json

from resources.feeds.base import Candle, FeedStream
from resources.feeds.csv_replay import CsvReplayFeed
from resources.store.feeds import FeedStore, upsert_records

UTC = timezone.utc
START = datetime(2025, 1, 7, 1, tzinfo=UTC)  # the file's first candle opens at 00:01
DAY_1, DAY_2, DAY_3, DAY_4 = (datetime(2025, 1, day, tzinfo=UTC) for day in (7, 8, 9, 10))
RETENTION_OP = "btc_updown__feed_retention"
STREAM = FeedStream("csv", "BTC", "candle", 60)


def _row(ts, open_, high, low, close, volume):
    """An archive row as the store's candle gives it."""
    values = {"open": open_, "high": high, "low": low, "close": close, "volume": volume}
    return (ts, open_, high, low, close, volume, close, json.dumps(values, sort_keys=True, separators=(",", ":")))


def _path(stored, day):
    return archive_path(stored["root"], "btc_updown", STREAM, day.date())


@pytest.fixture(scope="module")
def csv_rows(btc_csv) -> dict[datetime, tuple]:
    """ts_event -> (open, high, low, close, volume), as the CSV feed parses them."""
    with open(btc_csv, newline="") as handle:
        return {
            datetime.fromtimestamp(int(row["timestamp"]), tz=UTC):
                tuple(float(row[name]) for name in ("open", "high", "low", "close", "volume"))
            for row in csv.DictReader(handle)
        }


@pytest.fixture
def stored(clean_database, btc_csv, tmp_path, monkeypatch):
    """Feed candles of 2025-01-07 00:01 .. 2025-01-10 00:58 stored by the feed asset (one backfill
    run over the hourly partitions), and the maintenance definitions with their archive in tmp_path."""
    from resources.store.database import engine_for

    monkeypatch.setenv("CRUNCH_ARCHIVE_DIR", str(tmp_path / "archive"))
    spec = replace(SPEC, start=START)
    defs = build_definitions(spec=spec, feed=CsvReplayFeed(path=str(btc_csv), source="csv"), automation_running=False)
    partitions, keys = build_partitions(spec), ChainKeys.for_slug(spec.slug)
    dg.materialize(
        chain_assets(defs, [keys.feed_records]),
        resources=defs.resources,
        tags={RANGE_START_TAG: partitions.hour_key(START), RANGE_END_TAG: partitions.hour_key(DAY_4)},
    )
    assets, jobs, schedules = build_feed_maintenance(spec, partitions, keys)
    return {
        "defs": defs,
        "engine": engine_for(clean_database),
        "archive": assets[0],
        "retention_job": next(job for job in jobs if job.name == "btc_updown__feed_retention_job"),
        "schedules": schedules,
        "root": tmp_path / "archive",
    }


def _archive(stored, day: datetime) -> dg.MaterializeResult:
    result = dg.materialize([stored["archive"]], resources=stored["defs"].resources, partition_key=day.date().isoformat())
    (materialization,) = result.asset_materializations_for_node("btc_updown__feed_archive")
    return materialization.metadata


def _retention(stored, as_of: datetime, retention_days: int = 1):
    result = stored["retention_job"].execute_in_process(
        resources=stored["defs"].resources,
        run_config={"ops": {RETENTION_OP: {"config": {"retention_days": retention_days, "as_of": as_of.isoformat()}}}},
    )
    (observation,) = [event.event_specific_data.asset_observation for event in result.all_events
                      if event.event_type_value == "ASSET_OBSERVATION"]
    return {name: value.value for name, value in observation.metadata.items()}


def _stored_rows(engine, day: datetime) -> list[tuple]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT ts_event, values->>'open', values->>'high', values->>'low', values->>'close', values->>'volume' "
            "FROM crunch.feed_records WHERE source = 'csv' AND subject = 'BTC' "
            "AND ts_event >= :start AND ts_event < :end ORDER BY ts_event"
        ), {"start": day, "end": day + timedelta(days=1)}).fetchall()
    return [_row(row[0], *(float(value) for value in row[1:])) for row in rows]


def _count(engine, day: datetime) -> int:
    return len(_stored_rows(engine, day))


def test_archive_equals_store_and_csv_and_rewriting_changes_nothing(stored, csv_rows):
    metadata = _archive(stored, DAY_2)
    path = _path(stored, DAY_2)
    assert metadata["files"].value == [str(path)]
    assert metadata["status_by_subject"].value == {"BTC": "written"}

    table = pq.read_table(path)
    assert table.schema.remove_metadata() == archive_schema()
    archived = read_archive(path)
    expected = [_row(ts, *values) for ts, values in sorted(csv_rows.items()) if DAY_2 <= ts < DAY_3]
    assert len(expected) > 1400  # a real day of minutes (the file may miss a few)
    assert archived == _stored_rows(stored["engine"], DAY_2) == expected
    assert metadata["rows_by_subject"].value == {"BTC": len(expected)}

    content, modified_ns = path.read_bytes(), path.stat().st_mtime_ns
    again = _archive(stored, DAY_2)
    assert again["status_by_subject"].value == {"BTC": "unchanged"}
    assert path.read_bytes() == content and path.stat().st_mtime_ns == modified_ns
    assert not list(path.parent.glob(".*.tmp"))  # no temporary file left behind


def test_retention_deletes_only_archived_days_older_than_the_cutoff(stored):
    engine = stored["engine"]
    counts = {day: _count(engine, day) for day in (DAY_1, DAY_2, DAY_3, DAY_4)}
    assert all(counts.values())
    _archive(stored, DAY_2)
    _archive(stored, DAY_3)
    # A candle of day 3 corrected after its archive: its archive no longer holds the stored rows.
    corrected_at = DAY_3 + timedelta(hours=5)
    with engine.begin() as connection:
        assert upsert_records(connection, STREAM, [Candle("BTC", corrected_at, 1.0, 2.0, 0.5, 1.5, 7.0)]).written == 1

    as_of = DAY_4 + timedelta(days=1, hours=6)  # retention of 1 day: cutoff at DAY_4 00:00
    assert retention_cutoff(as_of, 1) == DAY_4
    report = _retention(stored, as_of)

    assert report["rows_deleted"] == counts[DAY_2]
    assert report["days_deleted"] == ["BTC 2025-01-08"]
    skipped = report["skipped"]
    assert set(skipped) == {"BTC 2025-01-07", "BTC 2025-01-09"}
    assert "no archive" in skipped["BTC 2025-01-07"]
    assert "1 candle(s) differ from the archive, first at 2025-01-09T05:00:00+00:00" in skipped["BTC 2025-01-09"]
    assert {day: _count(engine, day) for day in counts} == {**counts, DAY_2: 0}

    # Archiving a day again after retention deleted its rows keeps the file as it was.
    path = _path(stored, DAY_2)
    content = path.read_bytes()
    assert _archive(stored, DAY_2)["status_by_subject"].value == {"BTC": "unchanged"}
    assert path.read_bytes() == content and len(read_archive(path)) == counts[DAY_2]

    # Re-archived with the correction, day 3 goes too; day 1 stays until it is archived.
    assert _archive(stored, DAY_3)["status_by_subject"].value == {"BTC": "written"}
    assert _row(corrected_at, 1.0, 2.0, 0.5, 1.5, 7.0) in read_archive(_path(stored, DAY_3))
    report = _retention(stored, as_of)
    assert report["rows_deleted"] == counts[DAY_3]
    assert report["days_deleted"] == ["BTC 2025-01-09"] and list(report["skipped"]) == ["BTC 2025-01-07"]
    assert {day: _count(engine, day) for day in counts} == {**counts, DAY_2: 0, DAY_3: 0}


def test_retention_never_deletes_what_another_competition_still_keeps(stored):
    """Issue: retention deleted feed rows by source and subject, so two competitions sharing a
    source could delete each other's history. Each stream's rows go only past every subscriber's
    retention."""
    engine = stored["engine"]
    counts = {day: _count(engine, day) for day in (DAY_1, DAY_2, DAY_3)}
    for day in (DAY_1, DAY_2, DAY_3):
        _archive(stored, day)
    FeedStore(engine).subscribe("other_competition", [STREAM], retention_days=30)
    report = _retention(stored, DAY_4 + timedelta(days=1, hours=6))  # btc_updown alone would keep 1 day
    assert report["rows_deleted"] == 0 and report["days_deleted"] == []
    assert report["retention_days_applied_by_subject"] == {"BTC": 30}
    assert {day: _count(engine, day) for day in counts} == counts
    FeedStore(engine).subscribe("other_competition", [STREAM], retention_days=1)  # the other one lets go
    report = _retention(stored, DAY_4 + timedelta(days=1, hours=6))
    assert report["days_deleted"] == ["BTC 2025-01-07", "BTC 2025-01-08", "BTC 2025-01-09"]


def test_archives_of_competitions_sharing_a_stream_are_their_own(stored):
    path = _path(stored, DAY_2)
    assert archive_path(stored["root"], "other_competition", STREAM, DAY_2.date()) != path
    assert path.relative_to(stored["root"]).parts[:2] == ("btc_updown", "csv")


def test_retention_skips_a_day_whose_archive_is_unreadable(stored):
    engine = stored["engine"]
    path = _path(stored, DAY_2)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not parquet")
    report = _retention(stored, DAY_4 + timedelta(days=1))
    assert report["rows_deleted"] == 0
    assert "unreadable" in report["skipped"]["BTC 2025-01-08"]
    assert _count(engine, DAY_2) > 0


def test_definitions_load_with_the_chain_and_schedules_follow_the_automation_switch(btc_csv):
    spec = replace(SPEC, start=START)
    for running, status in ((False, dg.DefaultScheduleStatus.STOPPED), (True, dg.DefaultScheduleStatus.RUNNING)):
        defs = build_definitions(spec=spec, feed=CsvReplayFeed(path=str(btc_csv)), automation_running=running)
        repository = defs.get_repository_def()  # resolves jobs, resources and partition mappings
        assert repository.has_job("btc_updown__feed_archive_job") and repository.has_job("btc_updown__feed_retention_job")
        assert dg.AssetKey(["btc_updown", "feed_archive"]) in defs.resolve_asset_graph().get_all_asset_keys()
        maintenance = [s for s in defs.schedules if s.name.startswith("btc_updown__feed_")]
        assert {s.name for s in maintenance} == {"btc_updown__feed_archive_schedule", "btc_updown__feed_retention_schedule"}
        assert all(s.default_status == status for s in maintenance)
    partitions, keys = build_partitions(spec), ChainKeys.for_slug(spec.slug)
    _, _, running = build_feed_maintenance(spec, partitions, keys, running=True)
    assert all(s.default_status == dg.DefaultScheduleStatus.RUNNING for s in running)
