"""The scores asset check `scores_are_finite_and_unique` checks both halves of its name on a real
PostgreSQL: a non-finite score fails it, and so does a duplicated score, written by someone with
the database's superuser who dropped the unique keys that normally refuse it."""

from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest
import sqlalchemy as sa

from crunch_assets.defs.scores import checks
from resources.store import schema as t
from resources.store.competition import CompetitionStore
from resources.store.database import engine_for
from resources.store.lifecycles import InputStatus, PredictionStatus

SLUG = "demo"
AT = datetime(2026, 11, 2, 10, 5, tzinfo=timezone.utc)
KEY = dg.AssetKey("scores")


@pytest.fixture
def store(clean_database):
    engine = engine_for(clean_database)  # migrated; the test's URL is the owner's
    with engine.begin() as connection:
        input_id = connection.execute(t.inputs.insert().values(
            competition=SLUG, scope_key="BTC", cycle_at=AT, status=InputStatus.RESOLVED, received_at=AT,
            resolvable_at=AT + timedelta(minutes=1)).returning(t.inputs.c.id)).scalar_one()
        for model_id, value in (("alpha", 0.5), ("beta", -0.25)):
            prediction_id = connection.execute(t.predictions.insert().values(
                input_id=input_id, cycle_at=AT, competition=SLUG, model_id=model_id, scope_key="BTC",
                status=PredictionStatus.PENDING).returning(t.predictions.c.id)).scalar_one()
            _score(connection, prediction_id, model_id, value)
    return CompetitionStore(engine, SLUG)


def _score(connection, prediction_id: int, model_id: str, value: float) -> None:
    connection.execute(t.scores.insert().values(prediction_id=prediction_id, cycle_at=AT, value=value, success=True,
                                                competition=SLUG, model_id=model_id, scope_key="BTC"))


def _drop_unique_keys(connection, table: str) -> None:
    names = connection.execute(sa.text(
        "SELECT conname FROM pg_constraint WHERE conrelid = CAST(:table AS regclass) AND contype = 'u'"),
        {"table": f"crunch.{table}"}).scalars().all()
    assert names, f"crunch.{table} has no unique key to drop"
    for name in names:
        connection.execute(sa.text(f'ALTER TABLE crunch.{table} DROP CONSTRAINT "{name}"'))


def _check(store):
    return checks.check_scores_finite(store, KEY, AT - timedelta(hours=1), AT + timedelta(hours=1))


def test_clean_scores_pass(store):
    result = _check(store)
    assert result.passed and result.check_name == "scores_are_finite_and_unique"
    assert result.metadata["scores"].value == 2 and result.metadata["duplicates"].value == 0


def test_a_non_finite_score_fails(store):
    with store.engine.begin() as connection:
        connection.execute(t.scores.update().where(t.scores.c.model_id == "beta").values(value=float("nan")))
    result = _check(store)
    assert not result.passed and result.metadata["non_finite"].value == 1


def test_a_second_score_of_one_prediction_fails(store):
    with store.engine.begin() as connection:
        with pytest.raises(sa.exc.IntegrityError):  # refused while the key is there
            with connection.begin_nested():
                _score(connection, _prediction_of(connection, "alpha"), "alpha", 9.0)
        _drop_unique_keys(connection, "scores")
        _score(connection, _prediction_of(connection, "alpha"), "alpha", 9.0)
    result = _check(store)
    assert not result.passed and result.metadata["duplicates"].value == 1 and result.metadata["scores"].value == 3


def test_a_second_prediction_of_one_model_and_cycle_scored_fails(store):
    with store.engine.begin() as connection:
        _drop_unique_keys(connection, "predictions")
        input_id = connection.execute(sa.select(t.inputs.c.id)).scalar_one()
        prediction_id = connection.execute(t.predictions.insert().values(
            input_id=input_id, cycle_at=AT, competition=SLUG, model_id="beta", scope_key="BTC",
            status=PredictionStatus.PENDING).returning(t.predictions.c.id)).scalar_one()
        _score(connection, prediction_id, "beta", 7.0)  # its own prediction: the scores' key does not see it
    result = _check(store)
    assert not result.passed and result.metadata["duplicates"].value == 1


def _prediction_of(connection, model_id: str) -> int:
    return connection.execute(sa.select(t.predictions.c.id).where(t.predictions.c.model_id == model_id)).scalar_one()
