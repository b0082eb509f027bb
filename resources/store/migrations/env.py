"""Alembic environment: migrates the `crunch` schema on the connection handed in by migrate()."""

from alembic import context
from sqlalchemy import text

from resources.store.schema import SCHEMA, metadata

connection = context.config.attributes["connection"]
# Created only when missing: CREATE SCHEMA needs CREATE on the database, which an external
# server's migration role may not have once an administrator created the schema for it.
if connection.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = :name"), {"name": SCHEMA}).first() is None:
    connection.execute(text(f'CREATE SCHEMA "{SCHEMA}"'))
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table_schema=SCHEMA,
    include_schemas=True,
    include_name=lambda name, type_, parent_names: type_ != "schema" or name == SCHEMA,
)
with context.begin_transaction():
    context.run_migrations()
