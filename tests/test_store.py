"""The canonical store on a real PostgreSQL: migrations and idempotent bulk writes."""

from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from crunch_assets import store_queries as q
from resources.feeds.base import Candle
from resources.store import schema
from resources.store.database import engine_for
from resources.store.migrations import current_revision, head_revision


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


def test_every_time_column_is_timezone_aware():
    for table in schema.metadata.sorted_tables:
        for column in table.columns:
            if isinstance(column.type, sa.DateTime):
                assert column.type.timezone, f"{table.name}.{column.name} must be timestamptz"


def test_candle_upsert_is_idempotent_and_updates_only_changes(clean_database):
    engine = engine_for(clean_database)
    start = datetime(2025, 1, 7, tzinfo=timezone.utc)
    candles = [Candle("BTC", start + timedelta(minutes=i), 100, 101, 99, 100 + i, 1.0) for i in range(2000)]
    with engine.begin() as connection:
        assert q.upsert_candles(connection, "test", candles) == 2000
    with engine.begin() as connection:
        assert q.upsert_candles(connection, "test", candles) == 0  # same data: nothing written
    corrected = [Candle("BTC", start, 100, 101, 99, 150.0, 1.0)]
    with engine.begin() as connection:
        assert q.upsert_candles(connection, "test", corrected) == 1
        price = connection.execute(
            sa.select(schema.feed_records.c.price).where(schema.feed_records.c.ts_event == start)
        ).scalar_one()
    assert price == 150.0
