"""Run participant models on this machine: one OS process per model, JSON lines over pipes.

Each model runs `local_worker.py` in its own process (own process group, RLIMIT_AS memory cap,
stdout/stderr to /dev/null), so a model that hangs, crashes, prints megabytes or allocates without
bound only ever costs its own result. The coordinator side is a single-threaded selector loop: a
cycle writes the request to every model, then collects replies against one deadline per model.

Process lifecycle per model:
    NOT_STARTED -> STARTING (spawned, awaiting the handshake) -> READY
    STARTING -> BROKEN (import / constructor error, start-up timeout: FAILED for the whole session)
    READY -> NOT_STARTED (timed out, died, sent garbage: killed, and respawned right after the
             cycle so its start-up overlaps the pause between cycles; the next cycle waits for it)

Processes the model starts. A process group is not enough: a child that calls setsid() (or a
double-forked daemon) leaves it, and killpg does not reach it. Three ways were
weighed:
- A cgroup per model (cgroup.kill, or the freezer): exact, but it needs a writable, delegated
  cgroup hierarchy. The development VM runs as root with CAP_SYS_ADMIN, where cgroup v1 controllers
  and a cgroup2 mount are writable; an unprivileged container has /sys/fs/cgroup read-only.
- A PID namespace per model (unshare(CLONE_NEWPID); the namespace dies with its init): it needs
  CAP_SYS_ADMIN or unprivileged user namespaces, which Docker's default seccomp profile refuses.
- A child subreaper and sweeps of /proc: no privilege at all (Linux >= 3.4), so it works wherever
  this runner works. This is the one used.
Each model process is a small supervisor (PR_SET_CHILD_SUBREAPER) with the worker as its child
(see local_worker.py), so everything the model starts stays below the supervisor, orphans included.
When a process ends:
- detached during a call (orphaned, or out of the worker's process group or session): SIGKILLed by
  its worker at the end of the cycle, before run_cycle returns; so repeated cycles cannot pile
  them up. The coordinator reads /proc once per cycle for all its models and sends a sweep request
  only to a model that has such processes. (Each worker looking for itself after every call cost
  a walk over every pid handed out since its last look, threads included, in each of a hundred
  processes: on a busy machine, 50 ms of CPU per model and cycle.)
- still attached to the worker (a pool, a helper server): may live between calls, and ends with
  the worker;
- when the worker ends (session close, restart after a timeout, crash or protocol error): the
  supervisor ends everything on a worker's own exit; to kill a worker, the coordinator freezes the
  supervisor's whole tree (SIGSTOP, rescanning /proc until no new process appears) and SIGKILLs it
  at once, so nothing forks or gets reparented out of reach in between.
The kernel here has no /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN), so trees are found
from the ppid fields of /proc/<pid>/stat. Out of scope: a model that deliberately kills its own
supervisor; untrusted code needs a real sandbox.
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
from typing import Callable, Sequence

from pydantic import Field

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
from resources.model_runners.local_worker import (
    FREEZE_SECONDS,
    REAP_SECONDS,
    SWEEP_REQUEST,
    children_by_parent,
    detached_processes,
    kill_process_tree,
    last_pid,
    process_table,
    read_process,
)

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WORKER_SCRIPT = Path(__file__).resolve().with_name("local_worker.py")

# Room for the reply envelope and a failure detail on top of the model's output.
REPLY_ENVELOPE_BYTES = 64 * 1024
HANDSHAKE_MAX_BYTES = 64 * 1024
READ_CHUNK_BYTES = 256 * 1024
TERMINATE_GRACE_SECONDS = 1.0
REAP_TIMEOUT_SECONDS = 5.0
SWEEP_TIMEOUT_SECONDS = FREEZE_SECONDS + REAP_SECONDS + 5.0
# One process per model on a few cores: numeric libraries must not each start a thread per core.
SINGLE_THREAD_DEFAULTS = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}


class LocalModelRunner(ModelRunnerResource):
    """Participant models from a directory, each run in its own local process."""

    models_dir: str = Field(
        description="One model per `*.py` file or per package directory (with `__init__.py`); "
        "model_id is the file stem / directory name. Names starting with '_' or '.' are ignored."
    )
    memory_limit_mb: int = Field(default=1024, description="Address-space limit (RLIMIT_AS) of each model process; 0 = none.")
    startup_timeout_seconds: float = Field(default=20.0, description="Time for a model process to import and instantiate the model.")
    max_models_starting_at_once: int = Field(
        default=0, description="Model processes importing at the same time; 0 = twice the CPU count."
    )
    extra_pythonpath: list[str] = Field(
        default_factory=list, description="Added to the models' PYTHONPATH after the project root (e.g. where the base class lives)."
    )

    def list_models(self) -> list[ModelInfo]:
        return [
            ModelInfo(model_id=model_id, name=model_id, meta={"path": str(path)})
            # Absolute paths: each model process runs in its own directory.
            for model_id, path in discover_models(Path(self.models_dir).resolve()).items()
        ]

    def refused_models(self) -> dict[str, str]:
        return refused_models(Path(self.models_dir).resolve())

    def open_session(self, interface: ModelInterface) -> LocalModelSession:
        starting_at_once = self.max_models_starting_at_once or 2 * (os.cpu_count() or 1)
        return LocalModelSession(
            models=self.list_models(),
            worker_config=_WorkerConfig(
                base_class=interface.base_class,
                memory_limit_mb=self.memory_limit_mb,
                max_output_bytes=self.max_output_bytes,
                startup_timeout_seconds=self.startup_timeout_seconds,
                max_starting_at_once=max(1, starting_at_once),
                pythonpath=[str(PROJECT_ROOT), *(str(Path(p).resolve()) for p in self.extra_pythonpath)],
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
    max_starting_at_once: int
    pythonpath: list[str]

    def environment(self) -> dict[str, str]:
        env = {**SINGLE_THREAD_DEFAULTS, **os.environ}
        inherited = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([*self.pythonpath, *inherited])
        return env


class _State(enum.Enum):
    NOT_STARTED = "NOT_STARTED"
    STARTING = "STARTING"
    READY = "READY"
    BROKEN = "BROKEN"


class _ModelProcess:
    """One model's worker process, its pipes and what is known about it."""

    def __init__(self, info: ModelInfo):
        self.info = info
        self.model_id = info.model_id
        self.path = Path(info.meta["path"])
        self.state = _State.NOT_STARTED
        self.process: subprocess.Popen | None = None  # the supervisor
        self.model_pid: int | None = None  # the worker under it, from the handshake
        self.broken_detail: str | None = None
        self.startup_deadline = 0.0
        self.restart_count = 0

    def spawn(self, config: _WorkerConfig, environment: dict[str, str]) -> None:
        worker_config = {
            "model_id": self.model_id,
            "model_path": str(self.path),
            "base_class": config.base_class,
            "memory_limit_mb": config.memory_limit_mb,
            "max_output_bytes": config.max_output_bytes,
        }
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER_SCRIPT), json.dumps(worker_config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # never an unread pipe: a chatty model would block on it
            cwd=str(self.path if self.path.is_dir() else self.path.parent),
            env=environment,
            bufsize=0,
            close_fds=True,
            start_new_session=True,  # own session and process group (for SIGTERM at close)
        )
        # Requests may be megabytes: write without blocking, as the pipe drains.
        os.set_blocking(self.process.stdin.fileno(), False)
        self.state = _State.STARTING
        self.startup_deadline = time.monotonic() + config.startup_timeout_seconds

    def discard(self) -> str:
        """Kill the supervisor with every process of the model, reap it; return how it ended."""
        process, self.process = self.process, None
        self.model_pid = None
        if process is None:
            return "no process"
        # Before reaping: until then the pid (and the pgid) are ours, and the supervisor, frozen but
        # alive, keeps every orphan of the model in its tree. A supervisor that already exited
        # (reaped, or a zombie) did so after ending everything below it.
        if process.returncode is None:
            supervisor = read_process(process.pid)
            if supervisor is not None and supervisor.state not in ("Z", "X"):
                kill_process_tree(process.pid)
        _signal_group(process, signal.SIGKILL)  # what of the group is outside the tree, if anything
        try:
            returncode = process.wait(timeout=REAP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            returncode = None
            logger.error("model %s: process %s did not die after SIGKILL", self.model_id, process.pid)
        _close_pipes(process)
        return describe_exit(returncode)

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


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "process did not exit"
    if returncode < 0:
        try:
            signal_name = signal.Signals(-returncode).name
        except ValueError:
            signal_name = "unknown signal"
        return f"process killed by signal {-returncode} ({signal_name})"
    return f"process exited with code {returncode}"


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _close_pipes(process: subprocess.Popen) -> None:
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass


def _terminate_processes(live: dict[str, _ModelProcess]) -> None:
    """SIGTERM every model's group, SIGKILL what is still there after a grace, reap everything.
    A module-level function so that weakref.finalize can call it without keeping the session alive."""
    processes = [handle.process for handle in live.values() if handle.process is not None]
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    grace_deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.0, grace_deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for handle in live.values():
        if handle.process is not None:
            handle.discard()


class _Exchange:
    """Send `outgoing` to one model process and read back one line, before `deadline`."""

    def __init__(self, handle: _ModelProcess, outgoing: bytes, deadline: float, max_reply_bytes: int):
        self.handle = handle
        self.pending_output = memoryview(outgoing)
        self.deadline = deadline
        self.max_reply_bytes = max_reply_bytes
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
                return True
            self.deadline = time.monotonic() + self.timeout_seconds
        return False


def run_exchanges(
    exchanges: list[_Exchange],
    on_settled: Callable[[_Exchange], list[_Exchange]] | None = None,
) -> None:
    """Drive all exchanges concurrently until each has a reply or a failure.

    Writes everything it can first, then multiplexes reads and remaining writes. `on_settled` may
    return new exchanges to add (used to start more processes as earlier ones finish starting)."""
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

    try:
        for exchange in exchanges:
            admit(exchange)
        while active:
            now = time.monotonic()
            for exchange in [e for e in active if e.deadline <= now]:
                exchange.failure = "timeout"
                settle(exchange)
            if not active:
                break
            wait_seconds = max(0.0, min(e.deadline for e in active) - now)
            for key, events in selector.select(wait_seconds):
                exchange = key.data
                if exchange not in active:
                    continue  # settled by an earlier event of this same batch
                if events & selectors.EVENT_WRITE and exchange.write_some():
                    selector.unregister(exchange.stdin_fd)
                if events & selectors.EVENT_READ and exchange.read_some():
                    settle(exchange)
    finally:
        selector.close()


class LocalModelSession(ModelSession):
    def __init__(self, models: list[ModelInfo], worker_config: _WorkerConfig):
        self._models = list(models)
        self._config = worker_config
        self._environment = worker_config.environment()
        self._handles: dict[str, _ModelProcess] = {info.model_id: _ModelProcess(info) for info in self._models}
        self._cycle_number = 0
        self._last_pid_swept: int | None = None
        self._closed = False
        self._lock = threading.Lock()
        # Best effort if the session is dropped without close(), and at interpreter exit.
        self._finalizer = weakref.finalize(self, _terminate_processes, self._handles)
        try:
            self._start_processes()
        except BaseException:
            self.close()
            raise

    def models(self) -> list[ModelInfo]:
        return list(self._models)

    def process_ids(self) -> dict[str, int]:
        """By model_id, the pid of the live process the model runs in (that of its supervisor
        while it starts): diagnostics and tests."""
        return {mid: h.model_pid or h.process.pid for mid, h in self._handles.items() if h.process is not None}

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
                    # A restart begun after the last cycle: waiting for it would hold up this cycle,
                    # and its start-up deadline would lapse unobserved while the model is skipped.
                    handle.abandon_start()
            self._start_processes(called)  # models restarted after the last cycle
            self._cycle_number += 1
            request = _encode_request(self._cycle_number, calls)
            results: dict[str, ModelCallResult] = {}
            for model_id, handle in called.items():
                if handle.state is _State.BROKEN:
                    results[model_id] = ModelCallResult(model_id, CallStatus.FAILED, detail=f"could not start: {handle.broken_detail}")

            deadline = time.monotonic() + timeout_seconds
            exchanges = [
                _Exchange(handle, request, deadline, self._config.max_output_bytes + REPLY_ENVELOPE_BYTES)
                for handle in called.values()
                if handle.state is _State.READY
            ]
            run_exchanges(exchanges)
            for exchange in exchanges:
                results[exchange.handle.model_id] = self._settle_call(exchange, timeout_seconds)
            self._end_detached_processes([exchange.handle for exchange in exchanges])

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
        """Every cycle's request written to each model at once (a pipe holds several): one round
        trip per model for the whole batch instead of one per cycle. A model that times out,
        crashes or breaks the protocol is restarted and its list stops at that cycle."""
        with self._lock:
            if self._closed:
                raise RuntimeError("run_cycles_ahead on a closed LocalModelSession")
            called = {model_id: handle for model_id, handle in self._handles.items() if model_id in model_ids}
            self._start_processes(called)
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
            self._end_detached_processes([exchange.handle for exchange in exchanges])
            self._spawn_waiting(called)
            return results

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._finalizer()

    def _end_detached_processes(self, handles: list[_ModelProcess]) -> None:
        """Have each model whose processes detached from its worker during the cycle end them (see
        the module doc). A process can only detach by being created (a pid handed out) or by
        calling setsid() itself; the latter, without a new process, is left to the session's end."""
        newest_pid = last_pid()
        if newest_pid is not None and newest_pid == self._last_pid_swept:
            return
        self._last_pid_swept = newest_pid
        ready = [h for h in handles if h.state is _State.READY and h.process is not None and h.model_pid is not None]
        if not ready:
            return
        table = process_table()
        children = children_by_parent(table)
        detached = [h for h in ready if detached_processes(table, h.process.pid, h.model_pid, children)]
        if not detached:
            return
        sweeps = [_Exchange(h, SWEEP_REQUEST, time.monotonic() + SWEEP_TIMEOUT_SECONDS, HANDSHAKE_MAX_BYTES)
                  for h in detached]
        run_exchanges(sweeps)
        for sweep in sweeps:
            if sweep.failure is not None or not (sweep.reply or b"").startswith(b'{"type":"swept"'):
                logger.warning("model %s: sweep of its detached processes failed (%s): restarting it",
                               sweep.handle.model_id, sweep.failure or "unexpected reply")
                sweep.handle.mark_for_restart()  # kills the whole tree

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
        """One reply line as the call's result; a reply the worker could not make, or that is not
        the protocol, restarts the model."""
        model_id = handle.model_id
        try:
            reply = json.loads(reply_line)
            if reply.get("cycle") is None and not reply.get("ok"):
                # The worker itself failed (e.g. out of memory decoding the request): start afresh.
                handle.mark_for_restart()
                return ModelCallResult(model_id, CallStatus.FAILED, detail=str(reply.get("detail")))
            if reply.get("cycle") != cycle_number:
                raise ValueError(f"reply for cycle {reply.get('cycle')!r}")
        except (ValueError, AttributeError) as exc:
            handle.mark_for_restart()  # whatever wrote on the protocol pipe, the process is not trusted
            return ModelCallResult(model_id, CallStatus.FAILED, detail=f"protocol error: {exc}"[:300])
        exec_time_ms = float(reply.get("exec_time_ms") or 0.0)
        if reply.get("ok"):
            return ModelCallResult(model_id, CallStatus.SUCCESS, output=reply.get("output"), exec_time_ms=exec_time_ms)
        return ModelCallResult(model_id, CallStatus.FAILED, exec_time_ms=exec_time_ms, detail=str(reply.get("detail")))

    def _spawn_waiting(self, candidates: dict[str, _ModelProcess] | None = None) -> list[_ModelProcess]:
        """Spawn NOT_STARTED models (of `candidates`, default all) while fewer than the limit are
        starting; return those spawned."""
        starting = sum(1 for h in self._handles.values() if h.state is _State.STARTING)
        spawned = []
        for handle in (self._handles if candidates is None else candidates).values():
            if starting >= self._config.max_starting_at_once:
                break
            if handle.state is _State.NOT_STARTED:
                try:
                    handle.spawn(self._config, self._environment)
                except OSError as exc:  # e.g. out of processes / file descriptors
                    handle.mark_broken(f"cannot start a process: {exc}")
                    continue
                starting += 1
                spawned.append(handle)
        return spawned

    def _start_processes(self, candidates: dict[str, _ModelProcess] | None = None) -> None:
        """Bring every NOT_STARTED / STARTING model (of `candidates`, default all) to READY or
        BROKEN, a bounded number at once."""
        candidates = self._handles if candidates is None else candidates

        def handshake(handle: _ModelProcess) -> _Exchange:
            return _Exchange(handle, b"", handle.startup_deadline, HANDSHAKE_MAX_BYTES)

        def on_settled(exchange: _Exchange) -> list[_Exchange]:
            self._settle_handshake(exchange)
            return [handshake(handle) for handle in self._spawn_waiting(candidates)]

        self._spawn_waiting(candidates)
        starting = [handshake(h) for h in candidates.values() if h.state is _State.STARTING]
        if starting:
            run_exchanges(starting, on_settled)

    def _settle_handshake(self, exchange: _Exchange) -> None:
        handle = exchange.handle
        if exchange.failure == "timeout":
            handle.mark_broken(f"did not start within {float(self._config.startup_timeout_seconds)} s")
            return
        if exchange.failure == "eof":
            handle.mark_broken(f"model {handle.discard()} during start-up")
            return
        if exchange.failure == "overflow":
            handle.mark_broken("protocol error: oversized start-up message")
            return
        try:
            message = json.loads(exchange.reply)
        except ValueError as exc:
            handle.mark_broken(f"protocol error: {exc}")
            return
        if message.get("type") == "ready":
            handle.state = _State.READY
            pid = message.get("pid")
            handle.model_pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
        else:
            handle.mark_broken(str(message.get("detail")))


def _encode_request(cycle_number: int, calls: Sequence[MethodCall]) -> bytes:
    """Encoded once per cycle, written to every model."""
    request = {
        "cycle": cycle_number,
        "calls": [{"method": c.method, "args": list(c.args), "kwargs": dict(c.kwargs)} for c in calls],
    }
    return json.dumps(request, separators=(",", ":")).encode("ascii") + b"\n"
