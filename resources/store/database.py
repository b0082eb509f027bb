"""The competition store as a Dagster resource: one engine per process and role, migrated on first use."""

from __future__ import annotations

import threading

import dagster as dg
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from resources.database_url import DATABASE_URL_ENV, ROLE_URL_ENV, resolve_database_url, uses_embedded_server
from resources.store import json_codec
from resources.store.competition import CompetitionStore
from resources.store.feeds import FeedStore
from resources.store.migrations import current_revision, head_revision, migrate
from resources.store.roles import check_login_role

ROLES = ("owner", "engine", "api")
_engines: dict[tuple[str, str], sa.Engine] = {}  # (URL, role): a URL is checked for the role it is used as
_engines_lock = threading.Lock()


class StoreNotMigrated(RuntimeError):
    """The store's schema is behind the code and this process may not migrate it."""


def engine_for(url: str | None = None, *, role: str = "owner", database: str | None = None) -> sa.Engine:
    """A migrated engine, cached per process and URL so that a run's assets share one pool.

    `url` given: used as given (tests, benchmarks), and migrated with it when behind. Else the
    URL of `role` (owner: $CRUNCH_DATABASE_URL; engine, api: their own variables; unset: the
    embedded server), on `database` when given; an engine or api URL is first checked to be what it
    claims (not a superuser, not the owner, with its group's privileges), and a store behind the
    code is migrated with the owner's URL."""
    if role not in ROLES:
        raise ValueError(f"no store role {role!r}: one of {', '.join(ROLES)}")
    resolved = resolve_database_url(url, role, database)
    with _engines_lock:
        engine = _engines.get((resolved, role))
        if engine is None:
            engine = sa.create_engine(resolved, pool_pre_ping=True, pool_size=5, max_overflow=5,
                                      json_serializer=json_codec.dumps, json_deserializer=json_codec.loads)
            try:
                if url is None and role != "owner":
                    with engine.connect() as connection:
                        check_login_role(connection, role, _setting(role))
                _migrate_if_behind(engine, migrate_as_self=url is not None or role == "owner", database=database)
            except BaseException:
                engine.dispose()
                raise
            _engines[(resolved, role)] = engine
        return engine


def _setting(role: str) -> str:
    return f"the embedded server's {role} role" if uses_embedded_server() else ROLE_URL_ENV[role]


def _revision(engine: sa.Engine) -> str | None:
    with engine.connect() as connection:
        try:
            return current_revision(connection)
        except sa.exc.ProgrammingError:  # before migration 0006 a role of its own may not read the schema
            return None


def _migrate_if_behind(engine: sa.Engine, *, migrate_as_self: bool, database: str | None) -> None:
    if _revision(engine) == head_revision():
        return
    if migrate_as_self:
        migrate(engine)
        return
    try:
        owner_url = resolve_database_url(None, "owner", database)
    except Exception as error:
        raise StoreNotMigrated(
            f"the store's schema is behind this code (head {head_revision()}) and only the migrations' role may "
            f"upgrade it: run `crunch-dagster migrate` with {DATABASE_URL_ENV} set ({error})") from None
    owner = sa.create_engine(owner_url, poolclass=NullPool)
    try:
        migrate(owner)
    finally:
        owner.dispose()


def dispose_engines() -> None:
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


class CrunchDatabase(dg.ConfigurableResource):
    """The canonical store. `url` unset: the URL of `role` (the pipeline's resources: `engine`;
    the report API and the read-only commands: `api`), from the environment or the embedded
    server, on `database` when given (tests copy databases)."""

    url: str | None = None
    role: str = "engine"
    database: str | None = None

    @property
    def engine(self) -> sa.Engine:
        return engine_for(self.url, role=self.role, database=self.database)

    def feeds(self) -> FeedStore:
        return FeedStore(self.engine)

    def competition(self, slug: str) -> CompetitionStore:
        return CompetitionStore(self.engine, slug)
