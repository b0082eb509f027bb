"""The lifecycle enums (resources/store/lifecycles.py) and the database agree: each status column's
CHECK constraint, read from PostgreSQL's catalog after the migrations, allows exactly the enum's
values; a status outside it is refused by the database; the enums are their own strings."""

import json
import re
import typing
from datetime import datetime, timezone

import orjson
import pytest
import sqlalchemy as sa

from resources.store.database import engine_for
from resources.store.lifecycles import CheckpointStatus, InputStatus, PredictionReportStatus, PredictionStatus

# (table, column) -> the lifecycle it holds
COLUMNS = {
    ("inputs", "status"): InputStatus,
    ("predictions", "status"): PredictionStatus,
    ("checkpoints", "status"): CheckpointStatus,
    ("checkpoint_audit", "from_status"): CheckpointStatus,
    ("checkpoint_audit", "to_status"): CheckpointStatus,
}


def allowed_by_catalog(connection, table: str, column: str) -> set[str]:
    """The values the column's CHECK constraint allows, as PostgreSQL stores it (pg_constraint):
    `CHECK ((status = ANY (ARRAY['A'::text, 'B'::text])))`."""
    rows = connection.execute(sa.text(
        "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c "
        "JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY (c.conkey) "
        "WHERE c.contype = 'c' AND n.nspname = 'crunch' AND t.relname = :table AND a.attname = :column"),
        {"table": table, "column": column}).scalars().all()
    assert len(rows) == 1, f"crunch.{table}.{column}: expected one CHECK constraint, found {rows}"
    return set(re.findall(r"'([^']*)'::text", rows[0]))


def test_each_status_column_allows_exactly_its_lifecycle(clean_database):
    engine = engine_for(clean_database)  # migrated to head
    with engine.connect() as connection:
        for (table, column), lifecycle in COLUMNS.items():
            assert allowed_by_catalog(connection, table, column) == {str(s) for s in lifecycle}, (table, column)


def test_the_database_refuses_a_status_outside_the_lifecycle(clean_database):
    engine = engine_for(clean_database)
    at = datetime(2026, 11, 2, 10, tzinfo=timezone.utc)
    insert = sa.text("INSERT INTO crunch.inputs (competition, scope_key, cycle_at, status, received_at, resolvable_at, "
                     "raw_data, scope, meta) VALUES ('c', 's', :at, :status, :at, :at, '{}', '{}', '{}')")
    with engine.begin() as connection:
        connection.execute(insert, {"at": at, "status": InputStatus.RECEIVED})  # an enum binds as its string
        stored = connection.execute(sa.text("SELECT status FROM crunch.inputs")).scalar_one()
        assert stored == "RECEIVED" and stored == InputStatus.RECEIVED
    with pytest.raises(sa.exc.IntegrityError, match="ck_inputs_status"), engine.begin() as connection:
        connection.execute(insert, {"at": at.replace(hour=11), "status": "resolved"})  # case matters
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM crunch.inputs")).scalar_one() == 1


def test_the_enums_are_their_own_strings():
    for lifecycle in (InputStatus, PredictionStatus, PredictionReportStatus, CheckpointStatus):
        for status in lifecycle:
            assert status == status.value == status.name and f"{status}" == status.value
    assert json.dumps({"s": CheckpointStatus.PAID}) == '{"s": "PAID"}'
    assert orjson.dumps([PredictionStatus.ABSENT]) == b'["ABSENT"]'
    # a report status is a stored one, or derived: SCORED (answered, scored), VOIDED (the input's)
    assert set(PredictionReportStatus) == set(PredictionStatus) | {"SCORED", "VOIDED"}


def test_the_api_and_the_payout_code_use_the_lifecycle():
    from crunch_assets import payouts, verification
    from crunch_assets.api.bodies import StatusBody
    from resources.store.reports import PREDICTION_STATUSES

    assert typing.get_args(StatusBody.model_fields["status"].annotation) == tuple(CheckpointStatus)
    assert payouts.STATUSES == tuple(CheckpointStatus)
    assert set(payouts.PREVIOUS_STATUS) | {CheckpointStatus.PENDING} == set(CheckpointStatus)
    assert verification.STATUS_ORDER + (CheckpointStatus.SKIPPED,) == tuple(CheckpointStatus)
    assert PREDICTION_STATUSES == tuple(PredictionReportStatus)
