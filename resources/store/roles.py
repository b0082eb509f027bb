"""The database roles of a deployment, and the SQL that sets them up and checks them.

| role | embedded login | may |
|---|---|---|
| owner | `crunch_owner` | own the `crunch` schema, its tables and functions; run the migrations (`CRUNCH_DATABASE_URL`) |
| engine | `crunch_engine` | the pipeline's reads and writes (migration 0006 lists them): no DDL, no UPDATE or DELETE of predictions, scores or the audit, a checkpoint's status only through the owner's functions (it has none) |
| api | `crunch_api` | read; change a checkpoint's status only through `crunch.advance_checkpoint` (and store a gate result through `crunch.record_checkpoint_gate`) |
| dagster | `crunch_dagster` | Dagster's own storage in schema `public` (it owns those tables and migrates them); nothing in `crunch` |

The privileges of `crunch_engine` and `crunch_api` are granted by migration 0006 (to these group
roles: an external server's login roles may be members of them). The embedded server's logins,
their passwords (generated, under the data directory) and `pg_hba.conf` are set by
`provision_embedded`, run as the superuser by resources/database_url.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import sqlalchemy as sa

from resources.store.schema import SCHEMA

OWNER_LOGIN = "crunch_owner"
ENGINE_GROUP = "crunch_engine"
API_GROUP = "crunch_api"
DAGSTER_LOGIN = "crunch_dagster"
SUPERUSER = "postgres"
# role -> the name it logs in as on the embedded server
EMBEDDED_LOGINS = {"superuser": SUPERUSER, "owner": OWNER_LOGIN, "engine": ENGINE_GROUP, "api": API_GROUP,
                   "dagster": DAGSTER_LOGIN}
# role -> the group whose privileges its login must have (None: no group, e.g. Dagster's storage)
ROLE_GROUPS = {"engine": ENGINE_GROUP, "api": API_GROUP, "dagster": None}

# Every connection needs its role's password: no trust, no peer (a local process of the same OS
# user must not get in without the password).
HBA_CONF = """\
# Written by crunch-dagster (resources/database_url.py): every connection needs its role's password.
local   all   all                  scram-sha-256
host    all   all   127.0.0.1/32   scram-sha-256
host    all   all   ::1/128        scram-sha-256
"""


class DatabaseRoleError(RuntimeError):
    """A connection is not the role it is configured as (a superuser, the schema's owner, or
    without the group's privileges); the message names the setting."""


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677), computed here so
    that the password itself is never sent to the server (nor can appear in its log)."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
            f"${b64(hashlib.sha256(client_key).digest()).decode()}:{b64(server_key).decode()}")


def provision_logins(connection: sa.Connection, passwords: dict[str, str], database: str) -> None:
    """As a superuser: every login role of EMBEDDED_LOGINS exists with its password (a role absent
    from `passwords` keeps its own; "superuser" sets the superuser's), without any attribute beyond
    LOGIN; the owner may create the schema; Dagster's storage may create its tables in `public`."""
    for role, login in EMBEDDED_LOGINS.items():
        if role == "superuser":
            continue
        connection.execute(sa.text(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '%s') THEN CREATE ROLE %s; END IF; END $$"
            % (login, login)))
        connection.execute(sa.text(
            f"ALTER ROLE {login} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"))
    for role, password in passwords.items():  # the superuser's last: a failure before leaves the old one
        if role != "superuser":
            connection.execute(sa.text(f"ALTER ROLE {EMBEDDED_LOGINS[role]} PASSWORD :verifier"),
                               {"verifier": scram_verifier(password)})
    if "superuser" in passwords:
        connection.execute(sa.text(f"ALTER ROLE {SUPERUSER} PASSWORD :verifier"),
                           {"verifier": scram_verifier(passwords["superuser"])})
    quoted = connection.dialect.identifier_preparer.quote(database)
    connection.execute(sa.text(f"GRANT CREATE ON DATABASE {quoted} TO {OWNER_LOGIN}"))
    connection.execute(sa.text(f"GRANT USAGE, CREATE ON SCHEMA public TO {DAGSTER_LOGIN}"))


def reload_configuration(connection: sa.Connection) -> None:
    """As a superuser: the server reads pg_hba.conf again (new connections follow it)."""
    connection.execute(sa.text("SELECT pg_reload_conf()"))


def transfer_ownership(connection: sa.Connection) -> None:
    """As a superuser, on a database set up before the roles existed (everything owned by the
    superuser): the `crunch` schema and everything in it to the owner, Dagster's tables in
    `public` to Dagster's role. Idempotent."""
    connection.execute(sa.text(f"""
        DO $$
        DECLARE r record;
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = '{SCHEMA}'
                       AND nspowner <> '{OWNER_LOGIN}'::regrole) THEN
                EXECUTE 'ALTER SCHEMA {SCHEMA} OWNER TO {OWNER_LOGIN}';
            END IF;
            FOR r IN SELECT n.nspname, c.relname, n.nspname = '{SCHEMA}' AS ours
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname IN ('{SCHEMA}', 'public') AND c.relkind IN ('r', 'p')
                       AND c.relowner <> (CASE WHEN n.nspname = '{SCHEMA}' THEN '{OWNER_LOGIN}'
                                               ELSE '{DAGSTER_LOGIN}' END)::regrole
            LOOP
                EXECUTE format('ALTER TABLE %I.%I OWNER TO %I', r.nspname, r.relname,
                               CASE WHEN r.ours THEN '{OWNER_LOGIN}' ELSE '{DAGSTER_LOGIN}' END);
            END LOOP;
            FOR r IN SELECT p.oid::regprocedure AS signature FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE n.nspname = '{SCHEMA}' AND p.proowner <> '{OWNER_LOGIN}'::regrole
            LOOP
                EXECUTE format('ALTER FUNCTION %s OWNER TO {OWNER_LOGIN}', r.signature);
            END LOOP;
        END $$
    """))


def check_login_role(connection: sa.Connection, role: str, setting: str) -> None:
    """Refuse (DatabaseRoleError, naming `setting`) a connection that is a superuser, can act as
    the owner of anything in schema crunch, or (engine, api) lacks its group's privileges."""
    group = ROLE_GROUPS[role]
    row = connection.execute(sa.text(f"""
        SELECT current_user AS name, r.rolsuper AS superuser,
               EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname = '{SCHEMA}' AND pg_has_role(current_user, c.relowner, 'USAGE'))
               OR EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspname = '{SCHEMA}'
                          AND pg_has_role(current_user, n.nspowner, 'USAGE')) AS owner,
               CASE WHEN CAST(:group AS text) IS NULL THEN true
                    WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :group)
                    THEN pg_has_role(current_user, CAST(:group AS text), 'USAGE') ELSE false END AS member
        FROM pg_roles r WHERE r.rolname = current_user
    """), {"group": group}).one()
    advice = "see docs/operations.md#database-roles"
    if row.superuser:
        raise DatabaseRoleError(f"{setting} connects as {row.name!r}, a superuser: the {role} connects as a role of "
                                f"its own ({group or DAGSTER_LOGIN}); {advice}")
    if row.owner:
        raise DatabaseRoleError(f"{setting} connects as {row.name!r}, which owns (or may act as the owner of) the "
                                f"{SCHEMA} schema: only the migrations (CRUNCH_DATABASE_URL) do; {advice}")
    if not row.member:
        raise DatabaseRoleError(f"{setting} connects as {row.name!r}, which has not the privileges of {group}: "
                                f"GRANT {group} TO {row.name} (migration 0006 grants {group} its privileges); {advice}")
