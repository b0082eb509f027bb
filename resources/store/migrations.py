"""Schema migrations (Alembic), applied once per process before the store is used."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from resources.store.schema import SCHEMA

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any constant works; it serialises concurrent migrators (run workers starting together).
_MIGRATION_LOCK_ID = 8_311_220_261


def alembic_config(connection: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: sa.Connection) -> str | None:
    return MigrationContext.configure(connection, opts={"version_table_schema": SCHEMA}).get_current_revision()


def migrate(engine: sa.Engine, revision: str = "head") -> None:
    """Upgrade the crunch schema to `revision`, holding an advisory lock meanwhile."""
    with engine.connect() as connection:
        if revision == "head" and current_revision(connection) == head_revision():
            return
        connection.execute(sa.text("SELECT pg_advisory_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
        try:
            command.upgrade(alembic_config(connection), revision)
            connection.commit()
        finally:
            connection.execute(sa.text("SELECT pg_advisory_unlock(:id)"), {"id": _MIGRATION_LOCK_ID})
            connection.commit()
