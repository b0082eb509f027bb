"""The test tiers (docs/testing.md): the tier a test gets from its fixtures and its own calls, the
guard that keeps a unit test one, and the parallel scheduler's scopes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import SERIAL_GROUPS, assigned_tier

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def fake_item(fixtures=(), marks=(), function=None):
    return SimpleNamespace(fixturenames=list(fixtures), iter_markers=lambda: [SimpleNamespace(name=m) for m in marks],
                           function=function)


def pure():
    return 1 + 1


def materializes():
    import dagster as dg

    return dg.materialize([])


@pytest.mark.unit  # by hand: the text "materialize(" below would make it integration
def test_the_tier_follows_the_fixtures_then_the_calls():
    assert assigned_tier(fake_item(["tmp_path"], function=pure))[0] == "unit"
    assert assigned_tier(fake_item(["clean_database", "database_url"], function=pure))[0] == "integration"
    assert assigned_tier(fake_item(["instance"], function=pure))[0] == "integration"
    assert assigned_tier(fake_item(["browser", "database_url"], function=pure))[0] == "system"
    assert assigned_tier(fake_item(function=materializes)) == ("integration", "calls materialize(")
    assert assigned_tier(fake_item(["database_url"], marks=["system"], function=pure)) == ("system", "marked")


def test_this_test_is_a_unit_test(request):
    assert [m.name for m in request.node.iter_markers() if m.name in ("unit", "integration", "system")] == ["unit"]


def test_a_unit_test_that_connects_to_postgresql_fails_naming_its_tier():
    import psycopg2

    with pytest.raises(AssertionError, match=r"is in the unit tier \(not marked.*connects to PostgreSQL"):
        psycopg2.connect(host="/nonexistent", dbname="x")


@pytest.mark.unit  # by hand: its own call would make it integration
def test_a_unit_test_that_starts_the_embedded_server_fails_naming_its_tier(tmp_path):
    from resources.database_url import start_embedded_server

    with pytest.raises(AssertionError, match=r"unit tier \(marked\).*starts the embedded PostgreSQL"):
        start_embedded_server(tmp_path)
    assert not (tmp_path / "pgdata").exists()


@pytest.mark.unit  # by hand: its own call would make it integration
def test_a_unit_test_that_builds_a_dagster_instance_fails_naming_its_tier():
    import dagster as dg

    with pytest.raises(AssertionError, match="unit tier.*builds a Dagster instance"):
        dg.DagsterInstance.ephemeral()


def test_the_serialized_files_exist():
    for path in SERIAL_GROUPS:
        assert (PROJECT_ROOT / path).is_file(), path
