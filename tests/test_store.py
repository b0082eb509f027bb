"""The canonical store on a real PostgreSQL: migrations and idempotent bulk writes."""

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from resources.feeds.base import Candle, FeedStream
from resources.store import schema
from resources.store.bulk import bulk_upsert
from resources.store.database import engine_for
from resources.store.feeds import upsert_records
from resources.store.migrations import current_revision, head_revision

STREAM = FeedStream("test", "BTC", "candle", 60)


def test_upgrading_an_empty_database_gives_exactly_the_metadata(clean_database):
    engine = engine_for(clean_database)  # migrates the empty schema to head
    with engine.connect() as connection:
        assert current_revision(connection) == head_revision()
        context = MigrationContext.configure(
            connection,
            opts={"include_schemas": True, "version_table_schema": schema.SCHEMA,
                  "include_name": lambda name, type_, parents: type_ != "schema" or name == schema.SCHEMA},
        )
        assert compare_metadata(context, schema.metadata) == []
        tables = set(sa.inspect(connection).get_table_names(schema=schema.SCHEMA))
    assert tables == {t.name for t in schema.metadata.sorted_tables} | {"alembic_version"}


def test_compacting_the_prediction_tables_keeps_every_row_id_and_rule(clean_database):
    """Migration 0005 rewrites predictions and scores: rows, ids, keys and what ids come next survive."""
    from resources.store.migrations import migrate

    engine = sa.create_engine(clean_database)
    migrate(engine, "0004")
    at = datetime(2026, 1, 5, 10, tzinfo=timezone.utc)
    with engine.begin() as connection:
        input_id = connection.execute(sa.text(
            "INSERT INTO crunch.inputs (competition, scope_key, cycle_at, status, received_at, resolvable_at, actuals) "
            "VALUES ('c', 's', :at, 'RESOLVED', :at, :later, '{\"y\": 1}') RETURNING id"),
            {"at": at, "later": at + timedelta(minutes=1)}).scalar_one()
        for model, status in (("m1", "PENDING"), ("m2", "FAILED"), ("m3", "PENDING")):
            connection.execute(sa.text(
                "INSERT INTO crunch.predictions (competition, input_id, model_id, scope_key, cycle_at, resolvable_at, "
                "status, status_reason, exec_time_ms, performed_at, inference_output) VALUES ('c', :i, :m, 's', :at, "
                ":later, :status, :reason, 4.5, :at, '{\"p_up\": 0.7}')"),
                {"i": input_id, "m": model, "at": at, "later": at + timedelta(minutes=1), "status": status,
                 "reason": "raised" if status == "FAILED" else None})
        connection.execute(sa.text("DELETE FROM crunch.predictions WHERE model_id = 'm3'"))  # the newest id is gone
        connection.execute(sa.text(
            "INSERT INTO crunch.scores (competition, prediction_id, model_id, scope_key, cycle_at, value, success, result) "
            "SELECT 'c', id, model_id, 's', cycle_at, 0.91, true, '{\"y_up\": 1}' FROM crunch.predictions "
            "WHERE model_id = 'm1'"))
        before = connection.execute(sa.text(
            "SELECT p.id, p.model_id, p.status, p.status_reason, p.exec_time_ms, p.inference_output, s.id, s.value, "
            "s.result FROM crunch.predictions p LEFT JOIN crunch.scores s ON s.prediction_id = p.id ORDER BY p.id")).fetchall()
    migrate(engine)
    with engine.begin() as connection:
        after = connection.execute(sa.text(
            "SELECT p.id, p.model_id, p.status, p.status_reason, p.exec_time_ms, p.inference_output, s.id, s.value, "
            "s.result FROM crunch.predictions p LEFT JOIN crunch.scores s ON s.prediction_id = p.id ORDER BY p.id")).fetchall()
        assert after == before and len(after) == 2
        # ids go on after the deleted one, never reusing it
        new_id = connection.execute(sa.text(
            "INSERT INTO crunch.predictions (competition, input_id, model_id, scope_key, cycle_at, status) "
            "VALUES ('c', :i, 'm4', 's', :at, 'ABSENT') RETURNING id"), {"i": input_id, "at": at}).scalar_one()
        assert new_id == 4
        options = connection.execute(sa.text(
            "SELECT reloptions FROM pg_class WHERE oid = 'crunch.inputs'::regclass")).scalar_one()
        assert "toast_tuple_target=512" in options
    for statement in (
        "INSERT INTO crunch.predictions (competition, input_id, model_id, scope_key, cycle_at, status) "
        "VALUES ('c', %d, 'm1', 's', now(), 'PENDING')" % input_id,  # one per model and input
        "INSERT INTO crunch.scores (competition, prediction_id, model_id, scope_key, cycle_at, value, success) "
        "VALUES ('c', 999, 'm1', 's', now(), 1, true)",  # the prediction must exist
        "INSERT INTO crunch.scores (competition, prediction_id, model_id, scope_key, cycle_at, value, success) "
        "SELECT 'c', id, 'm1', 's', now(), 1, true FROM crunch.predictions WHERE model_id = 'm1'",  # once
    ):
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            connection.execute(sa.text(statement))
    engine.dispose()


def test_every_time_column_is_timezone_aware():
    for table in schema.metadata.sorted_tables:
        for column in table.columns:
            if isinstance(column.type, sa.DateTime):
                assert column.type.timezone, f"{table.name}.{column.name} must be timestamptz"


@pytest.mark.parametrize("count", [10, 2000])  # the multi-row INSERT and the COPY paths
def test_candle_upsert_is_idempotent_and_counts_corrections(clean_database, count):
    engine = engine_for(clean_database)
    start = datetime(2025, 1, 7, tzinfo=timezone.utc)
    candles = [Candle("BTC", start + timedelta(minutes=i), 100, 101, 99, 100 + i, 1.0) for i in range(count)]
    with engine.begin() as connection:
        assert upsert_records(connection, STREAM, candles).written == count
    with engine.begin() as connection:
        again = upsert_records(connection, STREAM, candles)  # same data: nothing written
    assert (again.written, again.corrected) == (0, 0)
    corrected = [Candle("BTC", start, 100, 101, 99, 150.0, 1.0), Candle("BTC", start - timedelta(minutes=1), 1, 1, 1, 1, 1)]
    with engine.begin() as connection:
        written = upsert_records(connection, STREAM, corrected)
        price = connection.execute(
            sa.select(schema.feed_records.c.price).where(schema.feed_records.c.ts_event == start)
        ).scalar_one()
    assert (written.written, written.corrected) == (2, 1)  # one new candle, one corrected by the source
    assert price == 150.0


@pytest.mark.parametrize("count", [3, 5000])
def test_bulk_upsert_writes_once_and_updates_only_real_changes(clean_database, count):
    engine = engine_for(clean_database)
    table = schema.leaderboards
    at = datetime(2025, 1, 7, tzinfo=timezone.utc)
    rows = [("demo", at + timedelta(minutes=i), [{"rank": 1, "value": i / 7, "name": "tab\there"}], {}) for i in range(count)]
    columns, key = ("competition", "as_of", "entries", "meta"), ("competition", "as_of")
    with engine.begin() as connection:
        assert bulk_upsert(connection, table, columns, rows, key, update_columns=("entries",)).written == count
    with engine.connect() as connection:
        versions = set(connection.execute(sa.text("SELECT id, xmin::text FROM crunch.leaderboards")).fetchall())
    with engine.begin() as connection:
        assert bulk_upsert(connection, table, columns, rows, key, update_columns=("entries",)).written == 0
    with engine.connect() as connection:
        assert set(connection.execute(sa.text("SELECT id, xmin::text FROM crunch.leaderboards")).fetchall()) == versions
        stored = connection.execute(sa.text("SELECT entries FROM crunch.leaderboards ORDER BY as_of LIMIT 1")).scalar_one()
    assert stored == rows[0][2]
    changed = [rows[0][:2] + ([{"rank": 2}], {})]
    with engine.begin() as connection:
        assert bulk_upsert(connection, table, columns, changed, key, update_columns=("entries",)).written == 1
        # DO NOTHING: an existing key is left alone and not counted
        assert bulk_upsert(connection, table, columns, changed, key).written == 0


def test_fetched_spans_merge_and_answer_coverage(clean_database):
    from resources.store.feeds import FeedStore, record_span

    engine = engine_for(clean_database)
    t0 = datetime(2025, 1, 7, tzinfo=timezone.utc)
    with engine.begin() as connection:
        record_span(connection, STREAM, t0, t0 + timedelta(hours=1))
        record_span(connection, STREAM, t0 + timedelta(hours=2), t0 + timedelta(hours=3))
    spans = FeedStore(engine).spans([STREAM], t0, t0 + timedelta(hours=3))[STREAM]
    assert len(spans.spans) == 2
    assert spans.covers(t0, t0 + timedelta(minutes=59)) and not spans.covers(t0, t0 + timedelta(hours=1))
    with engine.begin() as connection:  # filling the gap joins all three into one span
        record_span(connection, STREAM, t0 + timedelta(minutes=30), t0 + timedelta(hours=2))
    spans = FeedStore(engine).spans([STREAM], t0, t0 + timedelta(hours=3))[STREAM]
    assert spans.spans == ((t0, t0 + timedelta(hours=3)),)
    assert FeedStore(engine).fetched_until([STREAM]) == t0 + timedelta(hours=3)


@pytest.mark.parametrize("models", [3, 2100])  # below and above COPY_MIN_ROWS: the VALUES and the COPY paths
def test_scores_round_trip_awkward_text_through_either_write_path(clean_database, models):
    """Score rows are COPYed as hand-formatted text: tabs, newlines, backslashes and quotes in model
    ids, reasons and results come back exactly, and a second write of the same scores adds nothing."""
    from resources.store.competition import CompetitionStore
    from resources.store.rows import CycleWrite, InputRow, PredictionRow, Resolution, ScoreRow

    store = CompetitionStore(engine_for(clean_database), "demo")
    at = datetime(2025, 1, 7, 12, tzinfo=timezone.utc)
    model_ids = [f"m\t{i}\\x\n\"q\"é" for i in range(models)]
    store.write_cycles([CycleWrite(
        InputRow("BTC", at, at + timedelta(minutes=1), {"p": 1.0}, {}),
        [PredictionRow(m, "PENDING", inference_output={"p_up": 0.5}) for m in model_ids],
    )], [])
    (cycle,) = store.cycles_to_settle(at, at + timedelta(hours=1), at + timedelta(hours=1), None)
    assert {p.inference_output["p_up"] for p in cycle.predictions} == {0.5}
    rows = [ScoreRow(p.id, p.model_id, "BTC", at, i / 3, i % 2 == 0, None if i % 2 == 0 else f"bad\t{i}\\n\nline",
                     {"note": f"tab\there \\ back\nslash {i}", "x": [1.5, None]})
            for i, p in enumerate(sorted(cycle.predictions, key=lambda p: p.model_id))]
    assert store.write_settlement(rows, [Resolution(cycle.input_id, {"up": True}, 0.0)], []).scores == models
    assert store.write_settlement(rows, [], []).scores == 0
    with store.engine.connect() as connection:
        stored = connection.execute(sa.text(
            "SELECT prediction_id, model_id, scope_key, cycle_at, value, success, failed_reason, result "
            "FROM crunch.scores ORDER BY prediction_id")).fetchall()
    assert [tuple(r) for r in stored] == sorted(tuple(r) for r in rows)
