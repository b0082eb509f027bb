"""The report API's fixtures: two days of real BTC/USD candles replayed once per session into a
database of its own (a template), and a fresh copy of it (CREATE DATABASE .. TEMPLATE) wherever a
test changes checkpoints; the API served by a real uvicorn on a loopback port."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

START = datetime(2025, 1, 7, 1, tzinfo=timezone.utc)
END = START + timedelta(days=2)
CRUNCH_PUBKEY = "CrunchTestPubkey1111111111111111111111111111"
COMPUTE_PUBKEY = "ComputeTestPubkey111111111111111111111111111"
TOKEN = "test-operator-token-0123456789"
ACTOR = "payout-operator"
TEMPLATE_DB = "crunch_api_template"
_copies = itertools.count()


def database_named(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def role_env(url: str) -> dict[str, str]:
    """The database variables of a subprocess working on the database of `url` (a superuser URL
    of the test server): the migrations' URL and each role's, on that database; and where the test
    session publishes checkpoint roots (tests/conftest.py)."""
    import os

    from resources.database_url import DATABASE_ENV_VARS, DATABASE_URL_ENV

    name = make_url(url).database
    env = {var: database_named(os.environ[var], name) for var in DATABASE_ENV_VARS if var != DATABASE_URL_ENV}
    published = {"CRUNCH_ROOT_PUBLICATION_DIR": os.environ["CRUNCH_ROOT_PUBLICATION_DIR"]}
    return {DATABASE_URL_ENV: url, **env, **published}


def _admin(url: str):
    return sa.create_engine(url, isolation_level="AUTOCOMMIT")


def replay_spec():
    from competitions.btc_updown.definitions import SPEC
    from crunch_assets.spec import DAY_SECONDS

    return replace(SPEC, start=START, checkpoint_interval_seconds=DAY_SECONDS)


def accounts(crunch: str | None = CRUNCH_PUBKEY):
    from resources.payout_accounts import PayoutAccounts

    return PayoutAccounts(crunch_pubkey=crunch, compute_provider_pubkey=COMPUTE_PUBKEY)


@pytest.fixture(scope="session")
def api_template_url(database_url, btc_csv) -> str:
    """A database holding the replay of START..END (daily checkpoints, PENDING), never changed."""
    from competitions.btc_updown.definitions import build_definitions
    from crunch_assets.replay import replay
    from resources.feeds.csv_replay import CsvReplayFeed
    from resources.store.database import CrunchDatabase, dispose_engines

    admin = _admin(database_url)
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)"))
        connection.execute(sa.text(f"CREATE DATABASE {TEMPLATE_DB}"))
    url = database_named(database_url, TEMPLATE_DB)
    spec = replay_spec()
    defs = build_definitions(spec=spec, feed=CsvReplayFeed(path=str(btc_csv), source="csv"), automation_running=False,
                             database=CrunchDatabase(url=url), payout_accounts=accounts())
    replay(defs, spec, START, END)
    dispose_engines()  # a template database must have no open connection to be copied
    yield url
    dispose_engines()
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)"))
    admin.dispose()


@contextlib.contextmanager
def fresh_copy(database_url: str, template: str = TEMPLATE_DB):
    """A new database copied from the template, dropped afterwards."""
    name = f"crunch_api_copy_{next(_copies)}"
    admin = _admin(database_url)
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        connection.execute(sa.text(f"CREATE DATABASE {name} TEMPLATE {template}"))
    try:
        yield database_named(database_url, name)
    finally:
        from resources.store.database import dispose_engines

        dispose_engines()  # the test's pooled connections to the copy go with it
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def role_url(store_url: str, role: str) -> str:
    """The URL of `role` (engine, api, dagster) on the database of store_url."""
    import os

    return database_named(os.environ[f"CRUNCH_{role.upper()}_DATABASE_URL"], make_url(store_url).database)


@pytest.fixture
def api_database_url(database_url, api_template_url):
    """A fresh copy of the replayed database for one test."""
    with fresh_copy(database_url) as url:
        yield url


@pytest.fixture(scope="module")
def module_database_url(database_url, api_template_url):
    """A copy of the replayed database shared by one module's read-only tests."""
    with fresh_copy(database_url) as url:
        yield url


def report_competition(url: str, crunch: str | None = CRUNCH_PUBKEY):
    """The API's view of the database at `url`: connected as the api role (reads, and the
    checkpoint functions), with the rules the gate recomputes payouts with."""
    from competitions.btc_updown.definitions import RULES
    from crunch_assets.api import ReportCompetition
    from resources.store.database import CrunchDatabase

    return ReportCompetition(replay_spec(), accounts(crunch), CrunchDatabase(role="api", database=make_url(url).database),
                             RULES)


class LiveServer:
    """uvicorn serving an app on 127.0.0.1 in a thread, on a port the OS picked, configured as
    `crunch-dagster api` configures it (crunch_assets/api/server.py), with `limits`."""

    def __init__(self, app, limits=None):
        import uvicorn

        from crunch_assets.api.server import ServerLimits, server_config

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.server = uvicorn.Server(server_config(app, limits or ServerLimits(), log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)  # polling for readiness with a deadline
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()


def serve(url: str, *, token: str | None = TOKEN, crunch: str | None = CRUNCH_PUBKEY) -> LiveServer:
    from crunch_assets.api import create_app

    return LiveServer(create_app([report_competition(url, crunch)], api_token=token, actor=ACTOR, read_env=False))


@pytest.fixture
def live_api(api_database_url):
    """(server, client) over a fresh copy, mutations enabled with TOKEN."""
    with serve(api_database_url) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield server, client


@pytest.fixture(scope="module")
def read_api(module_database_url):
    with serve(module_database_url) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield server, client


def auth(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


PAGE_TEMPLATE_DB = "crunch_page_template"


@pytest.fixture(scope="session")
def page_template_url(database_url) -> str:
    """A database holding crypto_density (replayed, with a 6-hour hole), "crowd" (200 models) and
    "empty" (tests/api/page_data.py), never changed."""
    from resources.store.database import dispose_engines
    from tests.api import page_data

    admin = _admin(database_url)
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {PAGE_TEMPLATE_DB} WITH (FORCE)"))
        connection.execute(sa.text(f"CREATE DATABASE {PAGE_TEMPLATE_DB}"))
    url = database_named(database_url, PAGE_TEMPLATE_DB)
    page_data.replay_density(url)
    page_data.write_crowd(url)
    dispose_engines()
    yield url
    dispose_engines()
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {PAGE_TEMPLATE_DB} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture(scope="module")
def page_database_url(database_url, page_template_url):
    with fresh_copy(database_url, PAGE_TEMPLATE_DB) as url:
        yield url


@pytest.fixture(scope="module")
def pages_api(module_database_url, page_database_url):
    """(server, client) serving btc_updown (first: the default), crypto_density, crowd and empty."""
    from crunch_assets.api import ReportCompetition, create_app
    from resources.store.database import CrunchDatabase
    from tests.api import page_data

    database = CrunchDatabase(url=page_database_url)
    served = [report_competition(module_database_url)] + [
        ReportCompetition(spec, accounts(), database) for spec in
        (page_data.density_spec(), page_data.crowd_spec(), page_data.empty_spec())]
    with LiveServer(create_app(served, api_token=TOKEN, actor=ACTOR, read_env=False)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        yield server, client
