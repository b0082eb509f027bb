"""The competition store as a Dagster resource: one engine per process, migrated on first use."""

from __future__ import annotations

import threading
import dagster as dg
import sqlalchemy as sa

from resources.database_url import resolve_database_url
from resources.store import json_codec
from resources.store.competition import CompetitionStore
from resources.store.feeds import FeedStore
from resources.store.migrations import migrate

_engines: dict[str, sa.Engine] = {}
_engines_lock = threading.Lock()


def engine_for(url: str | None = None) -> sa.Engine:
    """A migrated engine for `url` (None: $CRUNCH_DATABASE_URL or the embedded server), cached
    per process so a run's assets share one connection pool."""
    resolved = resolve_database_url(url)
    with _engines_lock:
        engine = _engines.get(resolved)
        if engine is None:
            engine = sa.create_engine(resolved, pool_pre_ping=True, pool_size=5, max_overflow=5,
                                      json_serializer=json_codec.dumps, json_deserializer=json_codec.loads)
            migrate(engine)
            _engines[resolved] = engine
        return engine


def dispose_engines() -> None:
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


class CrunchDatabase(dg.ConfigurableResource):
    """The canonical store. `url` unset: $CRUNCH_DATABASE_URL, else the embedded PostgreSQL."""

    url: str | None = None

    @property
    def engine(self) -> sa.Engine:
        return engine_for(self.url)

    def feeds(self) -> FeedStore:
        return FeedStore(self.engine)

    def competition(self, slug: str) -> CompetitionStore:
        return CompetitionStore(self.engine, slug)
