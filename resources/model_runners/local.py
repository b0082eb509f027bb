"""Run participant models on this machine: one sandboxed process per model, JSON lines over pipes.

Each model runs `local_worker.py` in a sandbox of its own (sandbox.py: bubblewrap namespaces, no
network, read-only binds of only what it needs, its own user, resource limits, an environment of
only what the contract passes; in privileged mode forked by the session's fork server,
fork_server.py, which shares the interpreter between models), so a model that hangs, crashes, prints megabytes, allocates
without bound, forks or reads what it should not only ever costs its own result. The coordinator
side is a single-threaded selector loop: a cycle writes the request to every model, then collects
replies against one deadline per model.

Process lifecycle per model:
    NOT_STARTED -> STARTING (spawned, awaiting the handshake) -> READY
    STARTING -> BROKEN (import / constructor error: FAILED for the whole session)
    STARTING -> NOT_STARTED (start-up timed out: tried again later, `startup_attempts` in all,
                each attempt allowed twice as long, after a growing delay; then BROKEN)
    READY -> NOT_STARTED (timed out, died, sent garbage: killed, and respawned right after the
             cycle so its start-up overlaps the pause between cycles)
A cycle never waits for a model that is starting: it is sent its call if its handshake arrives
within the cycle's time budget, and is otherwise TIMEOUT "not ready" for that cycle while its
start-up goes on. So one slow restart (a loaded machine) costs a model a cycle, not the session,
and never delays the other models.

Processes the model starts: the sandbox's PID 1 is the model's supervisor (local_worker.py),
which ends every process of the model but the worker before it passes a reply on, so none
survives the call it was started in, attached, detached, double-forked or ignoring SIGTERM. To
end a model (timeout, crash, protocol error, session close), the coordinator SIGKILLs the
sandbox's PID 1: the kernel then kills everything in its PID namespace. A model can neither leave
the namespace nor stop its supervisor. Without a sandbox (`sandbox='off'`: an explicit choice
where the host cannot make one), the supervisor is a child subreaper and the coordinator kills a
model by freezing (SIGSTOP) its supervisor's whole tree found in /proc and SIGKILLing it; a model
that kills its own supervisor then escapes.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

from pydantic import Field

from resources.model_runners import sandbox
from resources.model_ids import model_id_problem
from resources.model_runners.base import (
    CallStatus,
    MethodCall,
    ModelCallResult,
    ModelInfo,
    ModelInterface,
    ModelRunnerResource,
    ModelSession,
)
from resources.model_runners.fork_server import FORK_SERVER_CAPABILITIES, ForkedProcess, ForkServer
from resources.model_runners.local_worker import describe_exit, kill_process_tree, read_process
from resources.model_runners.participants import read_participants

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WORKER_SCRIPT = Path(__file__).resolve().with_name("local_worker.py")

# Room for the reply envelope and a failure detail on top of the model's output.
REPLY_ENVELOPE_BYTES = 64 * 1024
HANDSHAKE_MAX_BYTES = 64 * 1024
READ_CHUNK_BYTES = 256 * 1024
CLOSE_GRACE_SECONDS = 1.0
REAP_TIMEOUT_SECONDS = 5.0


class LocalModelRunner(ModelRunnerResource):
    """Participant models from a directory, each run in its own sandboxed local process."""

    models_dir: str = Field(
        description="One model per `*.py` file or per package directory (with `__init__.py`); "
        "model_id is the file stem / directory name. Names starting with '_' or '.' are ignored. An optional "
        "participants.json / participants.toml there maps model ids to participants (default: each model its own)."
    )
    memory_limit_mb: int = Field(default=1024, description="Address-space limit (RLIMIT_AS) of each model process; 0 = none.")
    startup_timeout_seconds: float = Field(
        default=20.0, description="Time for a model process to import and instantiate the model (first attempt; "
        "each further attempt is allowed twice as long).")
    startup_attempts: int = Field(
        default=3, ge=1, description="Start-ups that time out in a row before a model counts as unable to start "
        "for the rest of the session. An import or constructor error fails it at once.")
    startup_retry_delay_seconds: float = Field(
        default=5.0, ge=0.0, description="Pause before trying again a start-up that timed out, doubled at each attempt.")
    max_models_starting_at_once: int = Field(
        default=0, description="Model processes importing at the same time; 0 = twice the CPU count."
    )
    extra_pythonpath: list[str] = Field(
        default_factory=list, description="Added to the models' PYTHONPATH after the project root (e.g. where the "
        "base class lives); bound read-only into every sandbox."
    )
    sandbox: Literal["on", "off"] = Field(
        default="on", description="'on': every model in a sandbox (docs/operations.md, Model sandbox); a host that "
        "cannot make one refuses to start the models. 'off': models run as the coordinator's user and see what it "
        "sees (the environment excepted): only for trusted models on a host without namespaces.")
    sandbox_read_only_paths: list[str] = Field(
        default_factory=list, description="Further files or directories every model may read (e.g. shared weights).")
    sandbox_tmp_mb: int = Field(default=64, ge=1, description="Size of each model's private /tmp (and the largest file it may write).")
    max_open_files: int = Field(default=256, ge=16, description="RLIMIT_NOFILE of each model process.")
    max_processes: int = Field(
        default=64, ge=2, description="RLIMIT_NPROC of each model (processes and threads of its own uid; privileged sandbox only).")
    fork_server: bool = Field(
        default=True, description="In a privileged sandbox (the coordinator runs as root), fork every model's sandbox "
        "from one preloaded process per session, so the interpreter is one copy for all models (~2 MiB per model "
        "instead of ~10); false: one bwrap and interpreter per model. A user-namespace sandbox always uses one bwrap "
        "per model.")
    sandbox_first_uid: int = Field(
        default=1_000_000_000, ge=1000, description="Models run as uids of their own in "
        "[sandbox_first_uid, sandbox_first_uid + 2^24) (privileged sandbox).")

    def list_models(self) -> list[ModelInfo]:
        models_dir = Path(self.models_dir).resolve()
        found = discover_models(models_dir)
        # The participant of each model: the participants file beside the models, or the model itself.
        declared = read_participants(models_dir, found)
        return [
            ModelInfo(model_id=model_id, name=model_id, meta={"path": str(path)},
                      player_id=declared[model_id].participant_id if model_id in declared else None,
                      player_name=declared[model_id].name if model_id in declared else None)
            # Absolute paths: each model process runs in its own directory.
            for model_id, path in found.items()
        ]

    def refused_models(self) -> dict[str, str]:
        return refused_models(Path(self.models_dir).resolve())

    def open_session(self, interface: ModelInterface) -> LocalModelSession:
        kind = None
        if self.sandbox == "on":
            kind = sandbox.sandbox_kind()
            forked = self.fork_server and kind == sandbox.PRIVILEGED
            sandbox.check_sandbox(kind, FORK_SERVER_CAPABILITIES if forked else sandbox.SUPERVISOR_CAPABILITIES)
        starting_at_once = self.max_models_starting_at_once or 2 * (os.cpu_count() or 1)
        pythonpath = [str(PROJECT_ROOT), *sandbox.resolved(self.extra_pythonpath)]
        read_only_paths = [*sandbox.resolved(self.extra_pythonpath), *sandbox.resolved(self.sandbox_read_only_paths)]
        read_only_paths += [str(WORKER_SCRIPT), *sandbox.base_class_files(interface.base_class, read_only_paths)]
        return LocalModelSession(
            models=self.list_models(),
            worker_config=_WorkerConfig(
                base_class=interface.base_class,
                memory_limit_mb=self.memory_limit_mb,
                max_output_bytes=self.max_output_bytes,
                startup_timeout_seconds=self.startup_timeout_seconds,
                startup_attempts=self.startup_attempts,
                startup_retry_delay_seconds=self.startup_retry_delay_seconds,
                max_starting_at_once=max(1, starting_at_once),
                pythonpath=pythonpath,
                sandbox_kind=kind,
                fork_server=self.fork_server and kind == sandbox.PRIVILEGED,  # (forked, when sandboxed)
                read_only_paths=read_only_paths,
                tmp_bytes=self.sandbox_tmp_mb * 1024 * 1024,
                max_open_files=self.max_open_files,
                max_processes=self.max_processes,
                first_uid=self.sandbox_first_uid,
                models_dir=str(Path(self.models_dir).resolve()),
            ),
        )


def discover_models(models_dir: Path) -> dict[str, Path]:
    """model_id -> path of its file or package directory, sorted by model_id (the files whose
    name is not a valid model id are refused: see refused_models)."""
    return scan_models(models_dir)[0]


def refused_models(models_dir: Path) -> dict[str, str]:
    """The model files and packages of models_dir refused for their name: name -> the reason."""
    return scan_models(models_dir)[1]


def scan_models(models_dir: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """(model_id -> path, sorted by model_id; refused file name -> why). A model's id is its file
    stem or package name, and must fit the model-id grammar (resources/model_ids.py), the one the
    report API accepts: a model it could not look up would be ranked and paid, yet could not get
    its proof or export."""
    if not models_dir.is_dir():
        raise FileNotFoundError(f"models_dir {models_dir} is not a directory")
    found: dict[str, Path] = {}
    refused: dict[str, str] = {}
    for entry in sorted(models_dir.iterdir()):
        if entry.name.startswith(("_", ".")):
            continue
        if entry.is_dir() and (entry / "__init__.py").is_file():
            model_id = entry.name
        elif entry.is_file() and entry.suffix == ".py":
            model_id = entry.stem
        else:
            continue
        problem = model_id_problem(model_id)
        if problem is not None:
            refused[entry.name] = problem
            logger.warning("model %r in %s refused, not registered (rename it): %s", entry.name, models_dir, problem)
            continue
        if model_id in found:
            # As Python's own import system does, a package wins over a module of the same name.
            logger.warning("models_dir has both %s and %s; using the package", found[model_id], entry)
            if entry.is_file():
                continue
        found[model_id] = entry
    return dict(sorted(found.items())), refused


@dataclass(frozen=True)
class _WorkerConfig:
    base_class: str
    memory_limit_mb: int
    max_output_bytes: int
    startup_timeout_seconds: float
    startup_attempts: int
    startup_retry_delay_seconds: float
    max_starting_at_once: int
    pythonpath: list[str]
    sandbox_kind: str | None  # sandbox.PRIVILEGED / USER_NAMESPACE, None: no sandbox
    fork_server: bool  # models forked by one ForkServer (privileged sandbox only)
    read_only_paths: list[str]
    tmp_bytes: int
    max_open_files: int
    max_processes: int
    first_uid: int
    models_dir: str

    def environment(self) -> dict[str, str]:
        return sandbox.contract_environment(self.pythonpath)

    def worker_arguments(self, model_id: str, model_path: Path) -> dict:
        privileged = self.sandbox_kind == sandbox.PRIVILEGED
        uid = sandbox.model_uid(self.first_uid, self.models_dir, model_id) if privileged else None
        return {
            "model_id": model_id,
            "model_path": str(model_path),
            "base_class": self.base_class,
            "max_output_bytes": self.max_output_bytes,
            "uid": uid,
            "gid": uid,
            "limits": {
                "memory_mb": self.memory_limit_mb,
                "open_files": self.max_open_files,
                # RLIMIT_NPROC counts every process of the uid: a bound of the model's only with a uid of its own.
                "processes": self.max_processes if privileged else None,
                "file_bytes": self.tmp_bytes,
            },
        }


class _State(enum.Enum):
    NOT_STARTED = "NOT_STARTED"
    STARTING = "STARTING"
    READY = "READY"
    BROKEN = "BROKEN"


class _ModelProcess:
    """One model's process (the sandbox, or the supervisor without one), its pipes and what is
    known about it."""

    def __init__(self, info: ModelInfo):
        self.info = info
        self.model_id = info.model_id
        self.path = Path(info.meta["path"])
        self.state = _State.NOT_STARTED
        self.process: subprocess.Popen | None = None  # bwrap's monitor, or the supervisor
        self.sandboxed = False
        self.model_pid: int | None = None  # the worker's pid, as the worker sees it (handshake)
        self.broken_detail: str | None = None
        self.started_at = 0.0
        self.startup_deadline = 0.0
        self.restart_count = 0
        self.start_timeouts = 0  # consecutive start-ups that timed out
        self.retry_at = 0.0
        self.start_problem: str | None = None
        self.leftover = b""  # bytes read past the last complete line
        self._info_file = None  # bwrap's --info-fd, read for the sandbox's PID 1
        self._init_pid: int | None = None

    def spawn(self, config: _WorkerConfig, fork_server: ForkServer | None = None) -> None:
        working_directory = str(self.path if self.path.is_dir() else self.path.parent)
        if fork_server is not None:
            self.process = fork_server.spawn(
                config.worker_arguments(self.model_id, self.path), model_path=str(self.path),
                working_directory=working_directory, keep=[*sandbox.python_roots(), *config.read_only_paths],
                tmp_bytes=config.tmp_bytes)
            self._init_pid = self.process.pid
            self._started(config)
            return
        arguments = json.dumps(config.worker_arguments(self.model_id, self.path))
        command = [sys.executable, "-s", str(WORKER_SCRIPT), arguments]
        pass_fds: tuple[int, ...] = ()
        info_write = None
        if config.sandbox_kind is not None:
            info_read, info_write = os.pipe()
            self._info_file = os.fdopen(info_read, "rb")
            os.set_blocking(info_read, False)
            pass_fds = (info_write,)
            command = sandbox.bwrap_command(
                config.sandbox_kind, read_only_paths=[*config.read_only_paths, str(self.path)],
                working_directory=working_directory, environment=config.environment(), tmp_bytes=config.tmp_bytes,
                info_fd=info_write, command=command,
            )
            environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # bwrap's own; the model's is --setenv
        else:
            environment = config.environment()
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,  # never an unread pipe: a chatty model would block on it
                cwd=working_directory,
                env=environment,
                bufsize=0,
                close_fds=True,
                pass_fds=pass_fds,
                start_new_session=True,
            )
        except BaseException:
            self._close_info()
            raise
        finally:
            if info_write is not None:
                os.close(info_write)
        self._started(config)

    def _started(self, config: _WorkerConfig) -> None:
        self.sandboxed = config.sandbox_kind is not None
        # Requests may be megabytes: write without blocking, as the pipe drains.
        os.set_blocking(self.process.stdin.fileno(), False)
        self.state = _State.STARTING
        self.leftover = b""
        self.started_at = time.monotonic()
        allowed = config.startup_timeout_seconds * 2 ** self.start_timeouts
        self.startup_deadline = self.started_at + allowed

    def init_pid(self) -> int | None:
        """The sandbox's PID 1 (in the coordinator's PID namespace), once bwrap has told it (read
        at the handshake; the pipe is closed then, so a model costs the coordinator two fds)."""
        if self._init_pid is None and self._info_file is not None and self.process is not None:
            pid = sandbox.read_info_pid(self._info_file)
            if pid is not None:
                self._close_info()
                self._init_pid = pid
        return self._init_pid

    def _close_info(self) -> None:
        if self._info_file is not None:
            try:
                self._info_file.close()
            except OSError:
                pass
            self._info_file = None

    def discard(self) -> str:
        """Kill every process of the model, reap its process; return how it ended."""
        process, self.process = self.process, None
        self.model_pid = None
        if process is None:
            return "no process"
        if process.returncode is None:
            if self.sandboxed:
                self._kill_sandbox(process)
            else:
                # Before reaping: until then the pid is ours, and the supervisor, frozen but alive,
                # keeps every orphan of the model in its tree. A supervisor that already exited did
                # so after ending everything below it.
                supervisor = read_process(process.pid)
                if supervisor is not None and supervisor.state not in ("Z", "X"):
                    kill_process_tree(process.pid)
        if not isinstance(process, ForkedProcess):  # (not our child: its pid is only safe through its pidfd)
            try:
                os.killpg(process.pid, signal.SIGKILL)  # what of the group is outside the tree, if anything
            except (ProcessLookupError, PermissionError):
                pass
        try:
            returncode = process.wait(timeout=REAP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            returncode = None
            logger.error("model %s: process %s did not die after SIGKILL", self.model_id, process.pid)
        _close_pipes(process)
        self._close_info()
        self._init_pid = None
        return describe_exit(returncode)

    def _kill_sandbox(self, process: subprocess.Popen) -> None:
        """SIGKILL the sandbox's PID 1: the kernel kills its whole PID namespace before PID 1's
        exit is reported, so bwrap's monitor, waited for next, exits only after all of it is gone.
        The signal goes through a pidfd taken while the process is still bwrap's child (a pid
        already reused is never signalled). PID 1 not known or gone: SIGKILL the monitor,
        --die-with-parent takes the sandbox with it."""
        if isinstance(process, ForkedProcess):
            process.kill()  # through its pidfd: the supervisor, PID 1 of the model's namespaces
            return
        init = self.init_pid()
        if init is not None:
            try:
                pidfd = os.pidfd_open(init)
            except (AttributeError, OSError):
                pidfd = None
            if pidfd is not None:
                try:
                    info = read_process(init)
                    if info is not None and info.ppid == process.pid:
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                        return
                except OSError:
                    pass  # exited meanwhile
                finally:
                    os.close(pidfd)
        try:
            process.kill()
        except ProcessLookupError:
            pass

    def mark_broken(self, detail: str) -> None:
        self.discard()
        self.state = _State.BROKEN
        self.broken_detail = detail
        logger.warning("model %s could not start: %s", self.model_id, detail)

    def mark_for_restart(self) -> None:
        self.discard()
        self.state = _State.NOT_STARTED
        self.restart_count += 1

    def abandon_start(self) -> None:
        """Stop a start-up nobody will wait for; the model starts afresh when next called."""
        self.discard()
        self.state = _State.NOT_STARTED

    def worker_pid_outside(self) -> int | None:
        """The worker's pid in the coordinator's PID namespace (diagnostics: reads /proc)."""
        if self.process is None:
            return None
        if not self.sandboxed:
            return self.model_pid or self.process.pid
        init = self.init_pid()
        if init is None:
            return None
        for pid in sandbox.namespace_processes(init) - {init}:
            info = read_process(pid)
            if info is not None and info.ppid == init and _innermost_pid(pid) == self.model_pid:
                return pid
        return None

    def processes(self) -> set[int]:
        """Every live process of the model (coordinator's pids): diagnostics and tests."""
        if self.process is None:
            return set()
        if self.sandboxed:
            init = self.init_pid()
            return sandbox.namespace_processes(init) if init is not None else set()
        from resources.model_runners.local_worker import descendants, process_table

        table = process_table()
        return {pid for pid in {self.process.pid} | descendants(table, self.process.pid)
                if pid in table and table[pid].state != "Z"}


def _innermost_pid(pid: int) -> int | None:
    """The pid a process has in its own PID namespace (the last NSpid field)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        return None
    return None


def _close_pipes(process: subprocess.Popen) -> None:
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass


def _terminate_processes(live: dict[str, _ModelProcess], fork_server: ForkServer | None = None) -> None:
    """Close every model's input (the worker exits, its supervisor ends the rest and exits), wait
    a moment for them, then kill what is left. A module-level function so that weakref.finalize
    can call it without keeping the session alive."""
    processes = [handle.process for handle in live.values() if handle.process is not None]
    for process in processes:
        try:
            process.stdin.close()
        except OSError:
            pass
    grace_deadline = time.monotonic() + CLOSE_GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.0, grace_deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for handle in live.values():
        if handle.process is not None:
            handle.discard()
    if fork_server is not None:
        fork_server.close()


class _Exchange:
    """Send `outgoing` to one model process and read back one line, before `deadline`."""

    def __init__(self, handle: _ModelProcess, outgoing: bytes, deadline: float, max_reply_bytes: int,
                 handshake: bool = False):
        self.handle = handle
        self.pending_output = memoryview(outgoing)
        self.deadline = deadline
        self.max_reply_bytes = max_reply_bytes
        self.handshake = handshake
        self.received = bytearray()
        self.reply: bytes | None = None
        self.failure: str | None = None  # "timeout" | "eof" | "overflow"

    @property
    def stdin_fd(self) -> int:
        return self.handle.process.stdin.fileno()

    @property
    def stdout_fd(self) -> int:
        return self.handle.process.stdout.fileno()

    def write_some(self) -> bool:
        """Write what the pipe takes now; True when nothing is left to write."""
        try:
            while self.pending_output:
                written = os.write(self.stdin_fd, self.pending_output)
                self.pending_output = self.pending_output[written:]
        except BlockingIOError:
            return False
        except (BrokenPipeError, OSError):
            # The process is gone; reading its stdout will report EOF and how it ended.
            self.pending_output = memoryview(b"")
        return True

    def take_leftover(self) -> bool:
        """Start from what an earlier exchange read past its line; True if that settles this one."""
        leftover, self.handle.leftover = self.handle.leftover, b""
        return bool(leftover) and self._take(leftover)

    def read_some(self) -> bool:
        """Read what is available; True once the exchange is settled (reply, EOF or overflow)."""
        try:
            chunk = os.read(self.stdout_fd, READ_CHUNK_BYTES)
        except OSError:
            chunk = b""
        if not chunk:
            self.failure = "eof"
            return True
        if self._take(chunk):
            return True
        if len(self.received) > self.max_reply_bytes:
            self.failure = "overflow"
            return True
        return False

    def _take(self, chunk: bytes) -> bool:
        """Add what was read; True once the reply line is complete."""
        newline_at = chunk.find(b"\n")
        if newline_at >= 0:
            self.reply = bytes(self.received) + chunk[:newline_at]
            self.handle.leftover = chunk[newline_at + 1:]  # e.g. the line saying the worker ended
            return True
        self.received += chunk
        return False


class _PipelinedExchange(_Exchange):
    """Send several cycles' requests to one model at once and read one reply line per request.
    The worker answers them in order, starting each as soon as it has answered the one before, so
    each reply is due within the call timeout of the previous one."""

    def __init__(self, handle: _ModelProcess, requests: list[bytes], timeout_seconds: float, max_reply_bytes: int):
        super().__init__(handle, b"".join(requests), time.monotonic() + timeout_seconds, max_reply_bytes)
        self.timeout_seconds = timeout_seconds
        self.expected = len(requests)
        self.replies: list[bytes] = []

    def _take(self, chunk: bytes) -> bool:
        """Add what was read; True once every reply line is complete. Each complete line starts
        the next call's time budget."""
        self.received += chunk
        while (newline_at := self.received.find(b"\n")) >= 0:
            self.replies.append(bytes(self.received[:newline_at]))
            del self.received[: newline_at + 1]
            if len(self.replies) == self.expected:
                self.handle.leftover = bytes(self.received)
                return True
            self.deadline = time.monotonic() + self.timeout_seconds
        return False


def run_exchanges(
    exchanges: list[_Exchange],
    on_settled: Callable[[_Exchange], list[_Exchange]] | None = None,
) -> None:
    """Drive all exchanges concurrently until each has a reply or a failure.

    Writes everything it can first, then multiplexes reads and remaining writes; what is readable
    is read before an exchange past its deadline is given up (a handshake already in the pipe
    counts). `on_settled` may return new exchanges to add (the call of a model that finished
    starting, more processes to start as earlier ones finish starting)."""
    selector = selectors.DefaultSelector()
    active: set[_Exchange] = set()

    def settle(exchange: _Exchange) -> None:
        active.discard(exchange)
        for fd in (exchange.stdin_fd, exchange.stdout_fd):
            try:
                selector.unregister(fd)
            except (KeyError, ValueError):
                pass
        if on_settled is not None:
            for added in on_settled(exchange):
                admit(added)

    def admit(exchange: _Exchange) -> None:
        active.add(exchange)
        selector.register(exchange.stdout_fd, selectors.EVENT_READ, exchange)
        if not exchange.write_some():
            selector.register(exchange.stdin_fd, selectors.EVENT_WRITE, exchange)
        if exchange.take_leftover():
            settle(exchange)

    try:
        for exchange in exchanges:
            admit(exchange)
        while active:
            now = time.monotonic()
            wait_seconds = max(0.0, min(e.deadline for e in active) - now)
            for key, events in selector.select(wait_seconds):
                exchange = key.data
                if exchange not in active:
                    continue  # settled by an earlier event of this same batch
                if events & selectors.EVENT_WRITE and exchange.write_some():
                    selector.unregister(exchange.stdin_fd)
                if events & selectors.EVENT_READ and exchange.read_some():
                    settle(exchange)
            now = time.monotonic()
            for exchange in [e for e in active if e.deadline <= now]:
                if exchange in active:
                    exchange.failure = "timeout"
                    settle(exchange)
    finally:
        selector.close()


class LocalModelSession(ModelSession):
    def __init__(self, models: list[ModelInfo], worker_config: _WorkerConfig):
        self._models = list(models)
        self._config = worker_config
        self._handles: dict[str, _ModelProcess] = {info.model_id: _ModelProcess(info) for info in self._models}
        self._cycle_number = 0
        self._closed = False
        self._lock = threading.Lock()
        self._fork_server = ForkServer(
            worker_script=WORKER_SCRIPT, models_dir=worker_config.models_dir,
            read_only_paths=worker_config.read_only_paths, environment=worker_config.environment(),
        ) if worker_config.fork_server else None
        # Best effort if the session is dropped without close(), and at interpreter exit.
        self._finalizer = weakref.finalize(self, _terminate_processes, self._handles, self._fork_server)
        try:
            self._start_processes()
        except BaseException:
            self.close()
            raise

    def models(self) -> list[ModelInfo]:
        return list(self._models)

    def process_ids(self) -> dict[str, int]:
        """By model_id, the pid of the live process the model's worker runs in (in this process's
        PID namespace; that of its sandbox or supervisor while it starts): diagnostics and tests."""
        found = {}
        for model_id, handle in self._handles.items():
            if handle.process is not None:
                found[model_id] = handle.worker_pid_outside() or handle.init_pid() or handle.process.pid
        return found

    def model_processes(self, model_id: str) -> set[int]:
        """Every live process of one model, its sandbox's PID 1 included: diagnostics and tests."""
        return self._handles[model_id].processes()

    def restart_counts(self) -> dict[str, int]:
        return {mid: h.restart_count for mid, h in self._handles.items()}

    def run_cycle(
        self,
        calls: Sequence[MethodCall],
        timeout_seconds: float,
        skip_model_ids: frozenset[str] = frozenset(),
    ) -> dict[str, ModelCallResult]:
        with self._lock:
            if self._closed:
                raise RuntimeError("run_cycle on a closed LocalModelSession")
            called = {model_id: handle for model_id, handle in self._handles.items() if model_id not in skip_model_ids}
            for model_id in self._handles.keys() & skip_model_ids:
                handle = self._handles[model_id]
                if handle.state is _State.STARTING:
                    # A restart begun after the last cycle: its start-up deadline would lapse
                    # unobserved while the model is skipped.
                    handle.abandon_start()
            self._spawn_waiting(called)  # models due a (re)start; the cycle does not wait for them
            self._cycle_number += 1
            request = _encode_request(self._cycle_number, calls)
            max_reply_bytes = self._config.max_output_bytes + REPLY_ENVELOPE_BYTES
            deadline = time.monotonic() + timeout_seconds
            calls_made: list[_Exchange] = []

            def call(handle: _ModelProcess) -> _Exchange:
                exchange = _Exchange(handle, request, deadline, max_reply_bytes)
                calls_made.append(exchange)
                return exchange

            def on_settled(exchange: _Exchange) -> list[_Exchange]:
                if not exchange.handshake:
                    return []
                self._settle_handshake(exchange)
                added = [self._handshake(h, deadline) for h in self._spawn_waiting(called)]
                if exchange.handle.state is _State.READY and time.monotonic() < deadline:
                    added.append(call(exchange.handle))
                return added

            exchanges = [call(h) for h in called.values() if h.state is _State.READY]
            exchanges += [self._handshake(h, deadline) for h in called.values() if h.state is _State.STARTING]
            run_exchanges(exchanges, on_settled)
            results: dict[str, ModelCallResult] = {}
            for exchange in calls_made:
                results[exchange.handle.model_id] = self._settle_call(exchange, timeout_seconds)
            for model_id, handle in called.items():
                if model_id not in results:
                    # Still starting: no answer within the call's budget, as a timeout (its process is kept).
                    status = CallStatus.TIMEOUT if handle.state is _State.STARTING else CallStatus.FAILED
                    results[model_id] = ModelCallResult(model_id, status, detail=self._why_not_called(handle, timeout_seconds))

            # Restarts boot while the coordinator works on this cycle; a skipped model is likely
            # skipped next cycle too, so it is left alone until it is called again.
            self._spawn_waiting(called)
            return {info.model_id: results[info.model_id] for info in self._models if info.model_id in called}

    def run_cycles_ahead(
        self,
        calls_per_cycle: Sequence[Sequence[MethodCall]],
        timeout_seconds: float,
        model_ids: frozenset[str],
    ) -> dict[str, list[ModelCallResult]]:
        """Every cycle's request written to each ready model at once (a pipe holds several): one
        round trip per model for the whole batch instead of one per cycle. A model that times out,
        crashes or breaks the protocol is restarted and its list stops at that cycle; a model not
        ready (starting) gets no list, and is called cycle by cycle."""
        with self._lock:
            if self._closed:
                raise RuntimeError("run_cycles_ahead on a closed LocalModelSession")
            called = {model_id: handle for model_id, handle in self._handles.items() if model_id in model_ids}
            self._spawn_waiting(called)
            first_cycle = self._cycle_number + 1
            requests = [_encode_request(first_cycle + k, calls) for k, calls in enumerate(calls_per_cycle)]
            self._cycle_number += len(requests)
            max_reply_bytes = self._config.max_output_bytes + REPLY_ENVELOPE_BYTES
            exchanges = [_PipelinedExchange(handle, requests, timeout_seconds, max_reply_bytes)
                         for handle in called.values() if handle.state is _State.READY]
            run_exchanges(exchanges)
            results: dict[str, list[ModelCallResult]] = {}
            for exchange in exchanges:
                answered = results[exchange.handle.model_id] = []
                for k, reply in enumerate(exchange.replies):
                    answered.append(self._call_result(exchange.handle, reply, first_cycle + k))
                    if exchange.handle.state is not _State.READY:  # a protocol error restarted it
                        break
                else:
                    if exchange.failure is not None:
                        answered.append(self._settle_call(exchange, timeout_seconds))
            self._spawn_waiting(called)
            return results

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._finalizer()

    def _settle_call(self, exchange: _Exchange, timeout_seconds: float) -> ModelCallResult:
        handle = exchange.handle
        model_id = handle.model_id
        if exchange.failure == "timeout":
            handle.mark_for_restart()
            return ModelCallResult(model_id, CallStatus.TIMEOUT, detail=f"timed out after {float(timeout_seconds)} s")
        if exchange.failure == "eof":
            how = handle.discard()
            handle.mark_for_restart()
            return ModelCallResult(model_id, CallStatus.FAILED, detail=f"model {how}")
        if exchange.failure == "overflow":
            handle.mark_for_restart()
            return ModelCallResult(
                model_id, CallStatus.FAILED, detail=f"output too large: reply over {exchange.max_reply_bytes} bytes"
            )
        return self._call_result(handle, exchange.reply, self._cycle_number)

    def _call_result(self, handle: _ModelProcess, reply_line: bytes, cycle_number: int) -> ModelCallResult:
        """One reply line as the call's result; a reply the worker could not make, the line saying
        the worker ended, or one that is not the protocol restarts the model."""
        model_id = handle.model_id
        try:
            reply = json.loads(reply_line)
            reaped = reply.get("reaped")
            note = None
            if isinstance(reaped, int) and reaped > 0:
                note = f"{reaped} process(es) the model left running were killed at the end of the call"
                logger.warning("model %s: %s", model_id, note)
            if reply.get("cycle") is None and not reply.get("ok"):
                # The worker ended, or failed itself (e.g. out of memory decoding the request): start afresh.
                handle.mark_for_restart()
                return ModelCallResult(model_id, CallStatus.FAILED, detail=_joined(str(reply.get("detail")), note))
            if reply.get("cycle") != cycle_number:
                raise ValueError(f"reply for cycle {reply.get('cycle')!r}")
        except (ValueError, AttributeError) as exc:
            handle.mark_for_restart()  # whatever wrote on the protocol pipe, the process is not trusted
            return ModelCallResult(model_id, CallStatus.FAILED, detail=f"protocol error: {exc}"[:300])
        exec_time_ms = float(reply.get("exec_time_ms") or 0.0)
        if reply.get("ok"):
            return ModelCallResult(model_id, CallStatus.SUCCESS, output=reply.get("output"), exec_time_ms=exec_time_ms,
                                   detail=note)
        return ModelCallResult(model_id, CallStatus.FAILED, exec_time_ms=exec_time_ms,
                               detail=_joined(str(reply.get("detail")), note))

    def _why_not_called(self, handle: _ModelProcess, timeout_seconds: float) -> str:
        if handle.state is _State.BROKEN:
            return f"could not start: {handle.broken_detail}"
        if handle.state is _State.STARTING:
            return (f"not ready: still starting after {time.monotonic() - handle.started_at:.1f} s "
                    f"(the call's time budget is {float(timeout_seconds)} s); called again next cycle")
        if handle.start_problem is not None:
            wait_seconds = max(0.0, handle.retry_at - time.monotonic())
            return (f"could not start: {handle.start_problem} (attempt {handle.start_timeouts} of "
                    f"{self._config.startup_attempts}); trying again in {wait_seconds:.0f} s")
        return "not ready: waiting for its turn to start (too many models starting at once)"

    def _handshake(self, handle: _ModelProcess, cycle_deadline: float | None = None) -> _Exchange:
        deadline = handle.startup_deadline if cycle_deadline is None else min(handle.startup_deadline, cycle_deadline)
        return _Exchange(handle, b"", deadline, HANDSHAKE_MAX_BYTES, handshake=True)

    def _spawn_waiting(self, candidates: dict[str, _ModelProcess] | None = None) -> list[_ModelProcess]:
        """Spawn NOT_STARTED models (of `candidates`, default all) due a start while fewer than the
        limit are starting; return those spawned."""
        starting = sum(1 for h in self._handles.values() if h.state is _State.STARTING)
        spawned = []
        now = time.monotonic()
        for handle in (self._handles if candidates is None else candidates).values():
            if starting >= self._config.max_starting_at_once:
                break
            if handle.state is _State.NOT_STARTED and handle.retry_at <= now:
                try:
                    handle.spawn(self._config, self._fork_server)
                except OSError as exc:  # e.g. out of processes / file descriptors
                    handle.mark_broken(f"cannot start a process: {exc}")
                    continue
                starting += 1
                spawned.append(handle)
        return spawned

    def _start_processes(self) -> None:
        """Bring every model to READY, BROKEN or a timed-out start (tried again later), a bounded
        number at once: the session's first start-up, which the first cycle waits for."""

        def on_settled(exchange: _Exchange) -> list[_Exchange]:
            self._settle_handshake(exchange)
            return [self._handshake(handle) for handle in self._spawn_waiting()]

        self._spawn_waiting()
        starting = [self._handshake(h) for h in self._handles.values() if h.state is _State.STARTING]
        if starting:
            run_exchanges(starting, on_settled)

    def _settle_handshake(self, exchange: _Exchange) -> None:
        handle = exchange.handle
        if exchange.failure == "timeout":
            if time.monotonic() >= handle.startup_deadline:
                self._start_timed_out(handle)
            return  # the cycle's time is up, not the start-up's: it goes on
        if exchange.failure == "eof":
            handle.mark_broken(f"model {handle.discard()} during start-up")
            return
        if exchange.failure == "overflow":
            handle.mark_broken("protocol error: oversized start-up message")
            return
        try:
            message = json.loads(exchange.reply)
            kind = message.get("type")
        except (ValueError, AttributeError) as exc:
            handle.mark_broken(f"protocol error: {exc}"[:300])
            return
        if kind == "ready":
            handle.state = _State.READY
            handle.start_timeouts, handle.start_problem = 0, None
            pid = message.get("pid")
            handle.model_pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
            handle.init_pid()
        elif message.get("ended"):
            handle.mark_broken(f"{message.get('detail')} during start-up")
        else:
            handle.mark_broken(str(message.get("detail")))

    def _start_timed_out(self, handle: _ModelProcess) -> None:
        """A start-up past its time: tried again after a pause, or, after `startup_attempts` in a
        row, the model cannot start for the rest of the session."""
        allowed = self._config.startup_timeout_seconds * 2 ** handle.start_timeouts
        handle.start_timeouts += 1
        problem = f"did not start within {float(allowed)} s"
        attempts = handle.start_timeouts
        if attempts >= self._config.startup_attempts:
            handle.mark_broken(problem if attempts == 1 else f"{problem} ({attempts} attempts in a row timed out)")
            return
        handle.discard()
        handle.state = _State.NOT_STARTED
        handle.start_problem = problem
        handle.retry_at = time.monotonic() + self._config.startup_retry_delay_seconds * 2 ** (attempts - 1)
        logger.warning("model %s %s (attempt %d of %d); trying again in %.0f s", handle.model_id, problem, attempts,
                       self._config.startup_attempts, max(0.0, handle.retry_at - time.monotonic()))


def _joined(detail: str, note: str | None) -> str:
    return detail if note is None else f"{detail}; {note}"


def _encode_request(cycle_number: int, calls: Sequence[MethodCall]) -> bytes:
    """Encoded once per cycle, written to every model."""
    request = {
        "cycle": cycle_number,
        "calls": [{"method": c.method, "args": list(c.args), "kwargs": dict(c.kwargs)} for c in calls],
    }
    return json.dumps(request, separators=(",", ":")).encode("ascii") + b"\n"
