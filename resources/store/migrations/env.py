"""Alembic environment: migrates the `crunch` schema on the connection handed in by migrate()."""

from alembic import context
from sqlalchemy import text

from resources.store.schema import SCHEMA, metadata

connection = context.config.attributes["connection"]
connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"'))
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table_schema=SCHEMA,
    include_schemas=True,
    include_name=lambda name, type_, parent_names: type_ != "schema" or name == SCHEMA,
)
with context.begin_transaction():
    context.run_migrations()
