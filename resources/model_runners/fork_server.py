"""The coordinator's side of the fork server (local_worker.py, "the fork server"): one sandboxed
process per session that forks every model's sandbox, so the interpreter and the worker's modules
are one copy for all models instead of one per model (docs/operations.md, "1,000 local models").

Used in a privileged sandbox only (the coordinator runs as root): in user-namespace mode a fresh
/proc cannot be mounted below bwrap's (the kernel refuses a proc mount in a user namespace while
parts of /proc are covered), so each model there keeps a bwrap of its own.

What each model gets is what sandbox.py describes for a bwrap of its own: its own PID, mount,
network (its loopback only), IPC and UTS namespaces, the same read-only files, a private /tmp and
/dev/shm of the same sizes, its own /dev/pts, a fresh /proc, the same environment, its own uid, the
same limits. The fork server's sandbox sees every model's directory; each model's supervisor covers
the models directory with an empty read-only tmpfs and binds back only its own model, then drops
every capability but its own four (CAP_SYS_ADMIN and CAP_NET_ADMIN, which it needed for that, among
them), before any model code runs.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from resources.model_runners import sandbox

# Capabilities the fork server keeps: the supervisor's, plus what a model's namespaces need to be made.
FORK_SERVER_CAPABILITIES = (*sandbox.SUPERVISOR_CAPABILITIES, "CAP_SYS_ADMIN", "CAP_NET_ADMIN")
SPAWN_TIMEOUT_SECONDS = 10.0  # a fork and a few mounts take milliseconds
FORK_SERVER_TMP_BYTES = 1 << 20
CLOSE_GRACE_SECONDS = 2.0


def _readable(fd: int, timeout_seconds: float | None) -> bool:
    """poll(2), not select(2): a session of 1,000 models holds descriptors past select's 1024."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout_seconds is None else max(0, int(timeout_seconds * 1000))))


class _ForkServerGone(OSError):
    """The fork server is no longer there to fork a model."""


class ForkedProcess:
    """A model's supervisor forked by the fork server, with what the session uses of a Popen:
    pid (in this PID namespace), stdin / stdout (the model's pipes), poll / wait / kill. It is not
    this process's child: its end is seen through a pidfd, and its exit code is not known (it is
    reported as killed by SIGKILL when this side killed it, else as exit code 0: the supervisor
    says itself, on its reply pipe, how the model ended)."""

    def __init__(self, pid: int, stdin_fd: int, stdout_fd: int):
        self.pid = pid
        self.stdin = open(stdin_fd, "wb", buffering=0)
        self.stdout = open(stdout_fd, "rb", buffering=0)
        self.returncode: int | None = None
        self._killed = False
        try:
            # The supervisor is unreaped (a zombie at worst) until the fork server's next reap, at
            # most a second after it ends: its pid cannot have been given to another process yet.
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = None
            self.returncode = 0

    def poll(self) -> int | None:
        if self.returncode is None and self._pidfd is not None:
            if _readable(self._pidfd, 0.0):
                self._ended()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and self._pidfd is not None:
            if not _readable(self._pidfd, timeout):
                raise subprocess.TimeoutExpired(f"model supervisor {self.pid}", timeout or 0.0)
            self._ended()
        return self.returncode  # type: ignore[return-value]

    def kill(self) -> None:
        if self.returncode is None and self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)  # its PID namespace dies with it
                self._killed = True
            except ProcessLookupError:
                pass

    def _ended(self) -> None:
        self.returncode = -signal.SIGKILL if self._killed else 0
        os.close(self._pidfd)
        self._pidfd = None

    def __del__(self) -> None:
        if getattr(self, "_pidfd", None) is not None:
            os.close(self._pidfd)


class ForkServer:
    """One fork server (a bwrap sandbox running local_worker.py --fork-server) for a session's
    models; started again if it dies (its models die with it: each then restarts as any model
    whose process died)."""

    def __init__(self, *, worker_script: Path, models_dir: str, read_only_paths: list[str],
                 environment: dict[str, str]):
        self._worker_script = worker_script
        self._models_dir = models_dir
        self._read_only_paths = read_only_paths
        self._environment = environment
        self._process: subprocess.Popen | None = None
        self._control: socket.socket | None = None
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()

    def _start(self) -> None:
        self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # each message says its sender's pid
        try:
            command = sandbox.bwrap_command(
                sandbox.PRIVILEGED, read_only_paths=[*self._read_only_paths, self._models_dir], working_directory="/",
                environment=self._environment, tmp_bytes=FORK_SERVER_TMP_BYTES, info_fd=None,
                command=[sys.executable, "-s", str(self._worker_script), "--fork-server", str(theirs.fileno())],
                capabilities=FORK_SERVER_CAPABILITIES,
            )
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, close_fds=True, pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._control = ours

    def spawn(self, config: dict, *, model_path: str, working_directory: str, keep: list[str],
              tmp_bytes: int) -> ForkedProcess:
        """A new sandboxed supervisor for one model, its pipes connected; OSError if it could not be made."""
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._start()
            try:
                return self._spawn(config, model_path, working_directory, keep, tmp_bytes)
            except _ForkServerGone:
                # It died since the last model was forked (killed, out of memory): its models died
                # with it and restart as this one does, on a new fork server.
                self._start()
                return self._spawn(config, model_path, working_directory, keep, tmp_bytes)

    def _spawn(self, config: dict, model_path: str, working_directory: str, keep: list[str],
               tmp_bytes: int) -> ForkedProcess:
        token = next(self._tokens)
        request = {"token": token, "config": config, "sandbox": {
            "models_dir": self._models_dir, "keep": [*keep, model_path],
            "working_directory": working_directory, "tmp_bytes": tmp_bytes}}
        requests_read, requests_write = os.pipe()
        replies_read, replies_write = os.pipe()
        try:
            try:
                socket.send_fds(self._control, [json.dumps(request).encode()], [requests_read, replies_write])
            except (BrokenPipeError, ConnectionError) as error:
                raise _ForkServerGone(str(error)) from error
            pid = self._await_started(token, replies_read)
        except BaseException:
            os.close(requests_write)
            os.close(replies_read)
            raise
        finally:
            os.close(requests_read)
            os.close(replies_write)
        return ForkedProcess(pid, requests_write, replies_read)

    def _await_started(self, token: int, replies_read: int) -> int:
        """The pid of the model's supervisor once it says it is ready. Its reply pipe readable
        first means it ended before (nothing else writes there until then): a failure at once,
        not a wait for the timeout."""
        deadline = time.monotonic() + SPAWN_TIMEOUT_SECONDS
        credentials_size = socket.CMSG_SPACE(12)  # struct ucred: pid, uid, gid
        poller = select.poll()
        poller.register(self._control.fileno(), select.POLLIN)
        poller.register(replies_read, select.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            events = dict(poller.poll(max(0, int(remaining * 1000)))) if remaining > 0 else {}
            if not events:
                raise OSError(f"the fork server did not start the model within {SPAWN_TIMEOUT_SECONDS} s")
            if self._control.fileno() not in events:
                raise OSError("the model's sandbox ended while it was being made")
            message, ancillary, _, _ = self._control.recvmsg(65536, credentials_size)
            if not message:
                raise _ForkServerGone("the fork server ended")
            reply = json.loads(message)
            if reply.get("token") not in (token, None):
                continue  # an answer to an earlier request given up on
            if not reply.get("ok"):
                raise OSError(str(reply.get("detail")))
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    return int.from_bytes(data[:4], sys.byteorder, signed=True)
            raise OSError("the model's supervisor did not say its pid")

    def close(self) -> None:
        """Stop the fork server; every model it forked dies with it (its PID namespace holds them)."""
        control, self._control = self._control, None
        process, self._process = self._process, None
        if control is not None:
            control.close()
        if process is not None:
            try:
                process.wait(timeout=CLOSE_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
