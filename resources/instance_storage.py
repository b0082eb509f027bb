"""Dagster instance storage on the same PostgreSQL as the competition store.

dagster.yaml names `CrunchPostgresStorage`. It connects as the dagster role (resources/store/roles.py:
it owns Dagster's tables in schema `public`, runs Dagster's own schema migrations, and has no
privilege in the competition store): `postgres_url` in its config, else
$CRUNCH_DAGSTER_DATABASE_URL, else the embedded server's, so `dagster dev -w workspace.yaml` needs
nothing configured. The three sub-storages are re-created from the instance ref in other
processes (run workers, the daemon), so each resolves the URL the same way.
"""

from __future__ import annotations

import threading

import sqlalchemy as sa
from dagster import Field, StringSource
from dagster._serdes import ConfigurableClassData
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage
from dagster_postgres.storage import DagsterPostgresStorage

from resources.database_url import DAGSTER_DATABASE_URL_ENV, resolve_database_url, uses_embedded_server
from resources.store.roles import check_login_role

_CONFIG = {
    "postgres_url": Field(StringSource, is_required=False),
    "should_autocreate_tables": Field(bool, is_required=False, default_value=True),
}


# Dagster builds a new instance (and so new storages) for many requests, e.g. every sensor
# evaluation in a code server. Each dagster-postgres storage checks its tables by reflection and
# talks through a NullPool engine (a new server connection, i.e. a forked backend, per query).
# Live, that was most of the deployment's CPU. So, per process: the tables are checked once per
# URL, and every storage shares one small pooled engine per URL.
_checked_urls: set[tuple[type, str]] = set()
_shared_engines: dict[str, sa.Engine] = {}
_lock = threading.Lock()


def shared_engine(url: str) -> sa.Engine:
    with _lock:
        engine = _shared_engines.get(url)
        if engine is None:
            engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", pool_size=2, max_overflow=8,
                                      pool_recycle=1800, pool_pre_ping=True)
            _shared_engines[url] = engine
        return engine


class _ResolvedUrl:
    """Config without a required URL: resolved like the competition store's, for the dagster role
    (explicit URL, $CRUNCH_DAGSTER_DATABASE_URL, else the embedded server)."""

    @classmethod
    def config_type(cls):
        return _CONFIG

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return build_storage(cls, dagster_url(config_value.get("postgres_url")),
                             config_value.get("should_autocreate_tables", True), inst_data)


def dagster_url(explicit_url: str | None) -> str:
    """The dagster role's URL; one from $CRUNCH_DAGSTER_DATABASE_URL is checked once per process not
    to be a superuser or the competition store's owner (refused, naming the variable)."""
    url = resolve_database_url(explicit_url, role="dagster")
    if not explicit_url and not uses_embedded_server() and url not in _checked_roles:
        with shared_engine(url).connect() as connection:
            check_login_role(connection, "dagster", DAGSTER_DATABASE_URL_ENV)
        _checked_roles.add(url)
    return url


_checked_roles: set[str] = set()


def build_storage(cls, url: str, autocreate: bool, inst_data=None):
    """A storage whose tables are checked once per process and URL, on the shared engine."""
    check_tables = autocreate and (cls, url) not in _checked_urls
    storage = cls(url, check_tables, inst_data=inst_data)
    _checked_urls.add((cls, url))
    if hasattr(storage, "_engine"):
        storage._engine = shared_engine(url)
    return storage


class CrunchRunStorage(_ResolvedUrl, PostgresRunStorage):
    pass


class CrunchEventLogStorage(_ResolvedUrl, PostgresEventLogStorage):
    pass


class CrunchScheduleStorage(_ResolvedUrl, PostgresScheduleStorage):
    pass


class CrunchPostgresStorage(_ResolvedUrl, DagsterPostgresStorage):
    """The instance storage named in dagster.yaml; its three parts are re-created from the
    instance ref in other processes, so each is one of the classes above."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True, inst_data=None):
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        self._token_provider = None
        self._run_storage = build_storage(CrunchRunStorage, postgres_url, should_autocreate_tables)
        self._event_log_storage = build_storage(CrunchEventLogStorage, postgres_url, should_autocreate_tables)
        self._schedule_storage = build_storage(CrunchScheduleStorage, postgres_url, should_autocreate_tables)
        super(DagsterPostgresStorage, self).__init__()

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(dagster_url(config_value.get("postgres_url")),
                   config_value.get("should_autocreate_tables", True), inst_data=inst_data)

    def _sub_storage_data(self, class_name: str) -> ConfigurableClassData | None:
        if not self.inst_data:
            return None
        return ConfigurableClassData(__name__, class_name, self.inst_data.config_yaml)

    @property
    def event_storage_data(self):
        return self._sub_storage_data(CrunchEventLogStorage.__name__)

    @property
    def run_storage_data(self):
        return self._sub_storage_data(CrunchRunStorage.__name__)

    @property
    def schedule_storage_data(self):
        return self._sub_storage_data(CrunchScheduleStorage.__name__)
