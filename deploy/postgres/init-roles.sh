#!/bin/sh
# Run once by the postgres image on an empty data directory (docker-entrypoint-initdb.d): the login
# roles of the engine, the report API and Dagster's storage, with the passwords from the compose
# secrets. The migrations (the `migrate` service, as the superuser) grant crunch_engine and
# crunch_api their privileges; crunch_dagster gets the public schema for Dagster's own tables.
set -eu
for role in engine api dagster; do
  password="$(cat "/run/secrets/crunch_${role}_password")"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
       -v role="crunch_${role}" -v password="$password" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
SQL
done
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -c 'GRANT USAGE, CREATE ON SCHEMA public TO crunch_dagster'
