"""Runs ONE participant model inside its own OS process and serves the coordinator's calls.

Started by `LocalModelRunner` as `python local_worker.py '<json config>'` (by file path, not with
`-m`, so no package `__init__` of the project runs here), inside the model's sandbox (see
sandbox.py) unless the operator turned it off. Deliberately stdlib-only with cheap imports: a
thousand of these start on a couple of cores, and every module imported here is memory each model
pays (docs/operations.md, "1,000 local models").

Protocol (newline-delimited JSON; `json.dumps` never emits a raw newline):
- fd 0 carries requests, fd 1 carries replies. In the worker, both are moved to private
  descriptors before the model is imported: fd 0 then reads /dev/null and fd 1 points at stderr,
  so the model's own prints (or reads) cannot corrupt the protocol.
- First line out is the start-up handshake:
      {"type": "ready", "class_name": ..., "startup_ms": ..., "pid": <the worker's pid>}
      {"type": "startup_failed", "detail": ...}          (then the process exits)
- Then, per cycle, one request line in and one reply line out (a range run may write several
  cycles' requests at once; they are read and answered one after the other, in order):
      in:  {"cycle": n, "calls": [{"method": ..., "args": [...], "kwargs": {...}}, ...]}
      out: {"cycle": n, "ok": true, "exec_time_ms": ..., "output": <last call's output>}
      out: {"cycle": n, "ok": false, "exec_time_ms": ..., "detail": ...}
  A reply after which processes of the model had to be killed carries `"reaped": <count>` first.
- When the worker ends, a last line says how, and the process exits:
      out: {"cycle": null, "ok": false, "ended": true, "detail": "model process exited with code 3"}
- End of input (the coordinator closed the pipe or died) makes the worker exit.

Processes. The process the runner starts (the sandbox's PID 1) is the *supervisor*: it forks the
*worker*, which sets the model's resource limits, drops to the model's own user (privileged
sandbox) and only then imports the model and serves the requests. The worker's replies go through
a pipe to the supervisor, which passes them on to the coordinator. Before it passes on a complete
line (the end of a call), the supervisor kills every process of the model other than the worker,
attached or detached: so when the coordinator reads a reply, nothing the model started during the
call is left. The model cannot prevent it: the supervisor runs as another user (root in the
sandbox, the model's uid is not), is not dumpable (no ptrace, no /proc/<pid>/mem), and as the
namespace's init it receives no signal from inside it; a model process cannot leave the PID
namespace, and when the supervisor dies, the kernel kills the whole namespace. When the worker
ends (end of input, a crash), the supervisor kills everything left and exits after the last line.
Without a sandbox (sandbox='off'), the same supervisor is a child subreaper (prctl
PR_SET_CHILD_SUBREAPER), so the model's orphans stay below it; it then finds the model's processes
in the host's /proc, and a model that kills its supervisor (same user) can escape.
"""

from __future__ import annotations

import os
import sys

# Running by file path puts this directory first on sys.path, where `base.py` (which imports
# dagster) would shadow any model's or base package's `base` module.
# (Only when run as a script: the coordinator imports this module for the process-tree functions.)
_WORKER_DIR = os.path.dirname(os.path.abspath(__file__))
if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0] or os.curdir) == _WORKER_DIR:
    del sys.path[0]

import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
from collections import namedtuple  # noqa: E402
from collections.abc import Callable  # noqa: E402

# The standard library's decoder, not orjson: importing orjson (and the modules it imports) costs
# each model ~1.6 MiB of private memory, 1.6 GiB at 1,000 models; json decodes a cycle's 5 KB
# request in ~0.25 ms instead of ~0.05 ms, 0.2 CPU-s per cycle at 1,000 models (bench_model_scale.py).
decode_request = json.loads

FALLBACK_MODULE_NAME = "participant_model"
MAX_DETAIL_CHARS = 1000
MAX_OUTPUT_DEPTH = 100
_JSON_SCALAR_TYPES = (str, int, bool, type(None))
READ_CHUNK_BYTES = 256 * 1024
# A reply line longer than the model's output bound and this much (without its newline yet) is
# passed on as it comes: the coordinator cuts off a reply past its own bound.
RELAY_MARGIN_BYTES = 128 * 1024


def main() -> None:
    if sys.argv[1] == FORK_SERVER_FLAG:
        _fork_server(int(sys.argv[2]))  # never returns
    _run_model(json.loads(sys.argv[1]))


def _run_model(config: dict) -> None:
    """The supervisor: fork the worker, relay its replies. Never returns."""
    replies_from_worker, replies_to_supervisor = os.pipe()
    _become_subreaper()  # without a sandbox; in one, PID 1 inherits every orphan anyway
    _set_dumpable(False)  # nothing of the model's user may ptrace the supervisor or read its memory
    worker_pid = os.fork()
    if worker_pid == 0:
        os.close(replies_from_worker)
        _serve(config, replies_to_supervisor)  # never returns
    os.close(replies_to_supervisor)
    _supervise(worker_pid, replies_from_worker, int(config["max_output_bytes"]) + RELAY_MARGIN_BYTES)


def _serve(config: dict, replies_fd: int) -> None:
    """The worker: confine, import the model, answer requests until end of input."""
    replies_out_fd = os.dup(replies_fd)  # a private descriptor; fd 1 becomes the model's stdout
    os.close(replies_fd)
    try:
        _confine(config)
    except BaseException as exc:  # noqa: BLE001 - never run the model unconfined
        _send(replies_out_fd, {"type": "startup_failed", "detail": _truncate(f"sandbox: {describe_exception(exc)}")})
        os._exit(0)
    requests_in = _take_over_stdio()

    started = time.perf_counter()
    try:
        model = _instantiate_model(config["model_path"], config["model_id"], config["base_class"])
    except BaseException as exc:  # noqa: BLE001 - any failure is reported, not raised
        detail = exc.args[0] if isinstance(exc, _StartupError) else describe_exception(exc)
        _send(replies_out_fd, {"type": "startup_failed", "detail": _truncate(detail)})
        os._exit(0)
    startup_ms = (time.perf_counter() - started) * 1000.0
    _send(replies_out_fd, {"type": "ready", "class_name": type(model).__name__, "startup_ms": round(startup_ms, 3),
                           "pid": os.getpid()})

    max_output_bytes = int(config["max_output_bytes"])
    while True:
        line = requests_in.readline()
        if not line:
            # os._exit: do not wait for threads the model may have left running. The supervisor
            # ends whatever processes the model still has.
            os._exit(0)
        _reap_own_children()
        try:
            reply = serve_request(model, decode_request(line), max_output_bytes)
        except BaseException as exc:  # noqa: BLE001 - e.g. MemoryError while decoding the request
            reply = '{"cycle":null,"ok":false,"exec_time_ms":0,"detail":%s}' % json.dumps(
                _truncate("worker error: " + describe_exception(exc))
            )
        _send_encoded(replies_out_fd, reply)


class _StartupError(Exception):
    """A start-up problem whose message is already the full explanation."""


# --- confinement ---------------------------------------------------------------------------------

PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
_LIMITS = {
    "memory_mb": ("RLIMIT_AS", 1024 * 1024),
    "open_files": ("RLIMIT_NOFILE", 1),
    "processes": ("RLIMIT_NPROC", 1),
    "file_bytes": ("RLIMIT_FSIZE", 1),
}


_LIBC = []


def _libc():
    if not _LIBC:
        import ctypes

        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


def _libc_check(result: int, what: str) -> None:
    if result != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _prctl(option: int, argument: int) -> None:
    _libc_check(_libc().prctl(option, argument, 0, 0, 0), f"prctl({option}, {argument})")


def _set_dumpable(dumpable: bool) -> None:
    try:
        _prctl(PR_SET_DUMPABLE, 1 if dumpable else 0)
    except (OSError, AttributeError):
        pass  # not Linux: nothing to protect with it


def _confine(config: dict) -> None:
    """In the worker, before any model code: resource limits (hard: the model cannot raise them),
    no core files, no new privileges, and in a privileged sandbox the model's own user."""
    for name, value in (config.get("limits") or {}).items():
        if value:
            limit_name, unit = _LIMITS[name]
            limit = int(value) * unit
            resource.setrlimit(getattr(resource, limit_name), (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crashing model should not write core files
    uid, gid = config.get("uid"), config.get("gid")
    if uid is not None:
        _empty_bounding_set()
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)  # also clears the permitted, effective and ambient capabilities
        _clear_inheritable_capabilities()
        if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
            raise OSError(f"still running as uid {os.getresuid()} gid {os.getresgid()} groups {os.getgroups()}")
    # The supervisor is not dumpable and a change of user resets it: the model's own processes may
    # inspect the worker (its /proc files, a debugger of the model's), nothing else can.
    _set_dumpable(True)
    try:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)  # bwrap sets it; without a sandbox it is set here
    except AttributeError:  # pragma: no cover - not Linux
        pass


def _clear_inheritable_capabilities() -> None:
    """capset(2) with every set empty (the permitted and effective ones are already)."""
    _capset(0)


def _capset(kept: int) -> None:
    """capset(2): the effective and permitted sets are `kept` (a mask of capabilities 0-31), the
    inheritable set empty."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3: two Data, for capabilities 0-63
    data = (Data * 2)()
    data[0].effective = data[0].permitted = kept
    _libc_check(_libc().capset(ctypes.byref(header), data), "capset")


def _empty_bounding_set(keep: tuple[int, ...] = ()) -> None:
    """Drop every capability but `keep` from the bounding set."""
    for capability in range(_last_capability() + 1):
        if capability not in keep:
            _prctl(PR_CAPBSET_DROP, capability)


def _last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as last_cap_file:
            return int(last_cap_file.read())
    except (OSError, ValueError):
        return 63


# --- the model's processes ----------------------------------------------------------------------

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
FREEZE_SECONDS = 2.0
REAP_SECONDS = 2.0
_STOPPED_STATES = frozenset("TtZXx")


# The fields of /proc/<pid>/stat used here; start_ticks (start time after boot, in clock ticks)
# with the pid is the process's identity. (collections, not typing: typing costs each model 0.5 MiB.)
ProcessInfo = namedtuple("ProcessInfo", ["ppid", "pgid", "sid", "state", "start_ticks"])


def read_process(pid: int) -> ProcessInfo | None:
    """/proc/<pid>/stat, or None if there is no such process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            data = stat_file.read()
        # The command name (field 2) is in parentheses and may itself contain ") ".
        fields = data[data.rindex(b")") + 2:].split()
        return ProcessInfo(int(fields[1]), int(fields[2]), int(fields[3]), fields[0].decode("ascii"), int(fields[19]))
    except (OSError, ValueError, IndexError):
        return None


def process_table() -> dict[int, ProcessInfo]:
    """Every process in /proc (this PID namespace), by pid."""
    table = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if name.isdigit():
            info = read_process(int(name))
            if info is not None:
                table[int(name)] = info
    return table


def children_by_parent(table: dict[int, ProcessInfo]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info.ppid, []).append(pid)
    return children


def descendants(table: dict[int, ProcessInfo], root: int) -> set[int]:
    """The pids below `root` (not `root` itself), following the ppid links."""
    children = children_by_parent(table)
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def signal_process(pid: int, start_ticks: int, signum: int) -> bool:
    """Send `signum` to `pid` only if it is still the process that started at `start_ticks` (a pid
    may be reused once a process is gone); through a pidfd where the kernel has them, so the check
    and the signal concern the same process. True if sent."""
    pidfd = None
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):
        pidfd = None  # no pidfds here: the check below is then best effort
    try:
        info = read_process(pid)
        if info is None or info.start_ticks != start_ticks:
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signum)
        else:
            os.kill(pid, signum)
        return True
    except OSError:  # gone meanwhile, or not ours to signal
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def freeze_and_kill(
    select: Callable[[dict[int, ProcessInfo]], set[int]], seconds: float = FREEZE_SECONDS, spare: int | None = None,
) -> dict[int, ProcessInfo]:
    """SIGKILL the processes `select` picks from the process table, without letting any slip away.

    Killing processes one by one races with their forking (a child born after the scan is missed)
    and with their exits (their orphans move to the subreaper). So they are first SIGSTOPped, and
    the table scanned again, until a scan picks nothing new and every picked process is stopped: a
    stopped process can neither fork nor exit, and orphans of anything that exited meanwhile were
    reparented within the tree and picked by the next scan. Then all are SIGKILLed at once.
    `spare` (the worker) is stopped first and continued at the end, never killed: its threads
    cannot fork meanwhile either. `select` must never pick the caller or its ancestors. Returns
    what was killed, by pid."""
    frozen: dict[int, ProcessInfo] = {}
    spared = read_process(spare) if spare is not None else None
    if spared is not None and not signal_process(spare, spared.start_ticks, signal.SIGSTOP):
        spared = None
    deadline = time.monotonic() + seconds
    while True:
        table = process_table()
        fresh = [pid for pid in select(table) if pid not in frozen and pid != spare]
        for pid in fresh:
            if signal_process(pid, table[pid].start_ticks, signal.SIGSTOP):
                frozen[pid] = table[pid]
        watched = [*frozen, *([spare] if spared is not None else [])]
        all_stopped = all(pid not in table or table[pid].state in _STOPPED_STATES for pid in watched)
        if (not fresh and all_stopped) or time.monotonic() >= deadline:
            break  # past the deadline (a process stuck in the kernel), kill what is known
        if not fresh:
            time.sleep(0.001)  # SIGSTOP is delivered asynchronously
    for pid, info in frozen.items():
        signal_process(pid, info.start_ticks, signal.SIGKILL)
    if spared is not None:
        signal_process(spare, spared.start_ticks, signal.SIGCONT)
    return frozen


def wait_until_dead(processes: dict[int, ProcessInfo], seconds: float = REAP_SECONDS) -> bool:
    """Poll until each process is gone or a zombie (True), or `seconds` pass (False)."""
    deadline = time.monotonic() + seconds
    pending = dict(processes)
    while pending:
        for pid, info in list(pending.items()):
            now = read_process(pid)
            if now is None or now.start_ticks != info.start_ticks or now.state in ("Z", "X", "x"):
                del pending[pid]
        if pending:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
    return True


def kill_process_tree(root_pid: int, seconds: float = FREEZE_SECONDS) -> dict[int, ProcessInfo]:
    """SIGKILL `root_pid` and all its descendants (see freeze_and_kill). Used by the coordinator
    on an unsandboxed supervisor: being a subreaper, it has every process of its model below it."""
    return freeze_and_kill(lambda table: ({root_pid} | descendants(table, root_pid)) if root_pid in table else set(),
                           seconds)


def last_pid() -> int | None:
    """The pid most recently handed out in the caller's PID namespace (/proc/loadavg), or None."""
    try:
        with open("/proc/loadavg", "rb") as loadavg:
            return int(loadavg.read().split()[4])
    except (OSError, ValueError, IndexError):
        return None


def _become_subreaper() -> bool:
    """Orphaned descendants are reparented to this process instead of init (Linux >= 3.4)."""
    try:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        return True
    except (OSError, AttributeError):
        return False


def _reap_own_children() -> None:
    """In the worker: collect the exit status of children the supervisor killed (or that ended),
    so none of them lingers as a zombie counted against the model's process limit. (The fork
    server too, for its children.)"""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


class _Supervisor:
    """The sandbox's PID 1 (or, without a sandbox, the subreaper above the worker)."""

    def __init__(self, worker_pid: int, max_line_bytes: int):
        self.me = os.getpid()
        self.worker_pid = worker_pid
        self.max_line_bytes = max_line_bytes
        self.worker_status: int | None = None
        self.last_pid_seen: int | None = None

    def reap_others(self) -> int:
        """Kill every process of the model but the worker; return how many."""
        newest = last_pid()
        if newest is not None and newest == self.last_pid_seen:
            return 0  # no process (nor thread) created since the last look: nothing new to end
        self.last_pid_seen = newest
        if not descendants(process_table(), self.me) - {self.worker_pid}:
            return 0
        killed = freeze_and_kill(lambda table: descendants(table, self.me) - {self.worker_pid}, spare=self.worker_pid)
        self.reap_zombies(wait_for=[pid for pid, info in killed.items() if info.ppid == self.me])
        wait_until_dead(killed)  # SIGKILL takes effect when the process next runs: dead before the reply
        return len(killed)

    def reap_zombies(self, wait_for=(), seconds: float = REAP_SECONDS) -> None:
        """Collect exited children (orphans reparented here die as our children), noting the
        worker's status; wait up to `seconds` for those in `wait_for`."""
        pending = set(wait_for)
        deadline = time.monotonic() + seconds
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                if not pending or time.monotonic() >= deadline:
                    return
                time.sleep(0.001)
                continue
            pending.discard(pid)
            if pid == self.worker_pid:
                self.worker_status = status

    def end_everything(self) -> None:
        """The worker is gone or must go: kill every process of the model and collect them."""
        freeze_and_kill(lambda table: descendants(table, self.me))
        deadline = time.monotonic() + REAP_SECONDS
        while time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == self.worker_pid:
                self.worker_status = status
            elif pid == 0:
                time.sleep(0.001)


def _supervise(worker_pid: int, replies_from_worker: int, max_line_bytes: int) -> None:
    """Pass the worker's reply lines on, each after ending the model's other processes; when the
    worker ends, end everything left and say how the worker ended. Never returns."""
    import selectors

    devnull_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull_fd, 0)  # requests are the worker's
    os.close(devnull_fd)
    supervisor = _Supervisor(worker_pid, max_line_bytes)
    selector = selectors.DefaultSelector()
    selector.register(replies_from_worker, selectors.EVENT_READ, "replies")
    try:
        worker_exit_fd = os.pidfd_open(worker_pid)  # readable once the worker has exited
        selector.register(worker_exit_fd, selectors.EVENT_READ, "exit")
    except (AttributeError, OSError):
        worker_exit_fd = None
    pending = bytearray()
    worker_ended = False
    while not worker_ended:
        events = selector.select(None if worker_exit_fd is not None else 1.0)
        if worker_exit_fd is None:
            supervisor.reap_zombies()
            worker_ended = supervisor.worker_status is not None
        for key, _ in events:
            if key.data == "exit":
                worker_ended = True
                continue
            chunk = os.read(replies_from_worker, READ_CHUNK_BYTES)
            if not chunk:  # the model closed its reply pipe: it cannot answer any more
                worker_ended = True
                break
            pending += chunk
            _relay(supervisor, pending, final=False)
    # Replies the worker wrote before it ended; the pipe may still be held open by a child of it.
    os.set_blocking(replies_from_worker, False)
    while True:
        try:
            chunk = os.read(replies_from_worker, READ_CHUNK_BYTES)
        except BlockingIOError:
            break
        if not chunk:
            break
        pending += chunk
    supervisor.end_everything()
    _relay(supervisor, pending, final=True)
    if supervisor.worker_status is None:
        try:
            supervisor.worker_status = os.waitpid(worker_pid, 0)[1]
        except ChildProcessError:
            pass
    ending = {"cycle": None, "ok": False, "ended": True, "detail": "model " + describe_wait_status(supervisor.worker_status)}
    _send(1, ending)
    os._exit(0)


def _relay(supervisor: _Supervisor, pending: bytearray, final: bool) -> None:
    """Write out the complete lines of `pending` (after reaping the model's other processes,
    noted in the last line as "reaped"); a line too long to hold is passed on as it is (the
    coordinator cuts it off); at the end (`final`), an unfinished line is dropped."""
    end = pending.rfind(b"\n") + 1
    if end == 0:
        if len(pending) > supervisor.max_line_bytes and not final:
            _write_all(1, bytes(pending))
            pending.clear()
        return
    lines = bytes(pending[:end])
    del pending[:end]
    reaped = 0 if final else supervisor.reap_others()
    if reaped:
        last_start = lines.rfind(b"\n", 0, len(lines) - 1) + 1
        if lines.startswith(b"{", last_start):
            lines = lines[:last_start] + b'{"reaped":%d,' % reaped + lines[last_start + 1:]
    _write_all(1, lines)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BrokenPipeError:
            os._exit(0)  # the coordinator is gone
        view = view[written:]


def describe_wait_status(status: int | None) -> str:
    """How a process ended, from its os.waitpid status."""
    if status is None:
        return "process did not exit"
    if os.WIFSIGNALED(status):
        return describe_exit(-os.WTERMSIG(status))
    if os.WIFEXITED(status):
        return describe_exit(os.WEXITSTATUS(status))
    return f"process ended with status {status}"


def describe_exit(returncode: int | None) -> str:
    """How a process ended, from its Popen.returncode (negative: the signal that killed it)."""
    if returncode is None:
        return "process did not exit"
    if returncode < 0:
        try:
            signal_name = signal.Signals(-returncode).name
        except ValueError:
            signal_name = "unknown signal"
        return f"process killed by signal {-returncode} ({signal_name})"
    return f"process exited with code {returncode}"


def _take_over_stdio():
    """Keep a private copy of fd 0 for the requests; give the model /dev/null and stderr."""
    requests_in = os.fdopen(os.dup(0), "rb")
    devnull_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull_fd, 0)
    os.close(devnull_fd)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return requests_in


def _instantiate_model(model_path: str, model_id: str, base_class_path: str):
    base_class = _import_base_class(base_class_path)
    module = _import_model_module(model_path, model_id)
    model_class = _find_model_class(module, base_class, base_class_path)
    try:
        return model_class()
    except BaseException as exc:  # noqa: BLE001
        raise _StartupError(f"{model_class.__name__}() failed: {describe_exception(exc)}") from exc


def _import_base_class(base_class_path: str) -> type:
    module_name, _, qualified_name = base_class_path.partition(":")
    if not module_name or not qualified_name:
        raise _StartupError(f"base class {base_class_path!r} is not of the form 'package.module:ClassName'")
    try:
        target = importlib.import_module(module_name)
        for attribute in qualified_name.split("."):
            target = getattr(target, attribute)
    except BaseException as exc:  # noqa: BLE001
        raise _StartupError(f"cannot import base class {base_class_path}: {describe_exception(exc)}") from exc
    if not isinstance(target, type):
        raise _StartupError(f"base class {base_class_path} is not a class")
    return target


def _model_module_name(model_id: str) -> str:
    """The model's own name when that is safe, so pickling and absolute imports inside a model
    package (`from my_model.features import ...`) work; otherwise a neutral name."""
    stdlib_names = getattr(sys, "stdlib_module_names", ())
    if model_id.isidentifier() and model_id not in sys.modules and model_id not in stdlib_names:
        return model_id
    return FALLBACK_MODULE_NAME


def _import_model_module(model_path: str, model_id: str):
    module_name = _model_module_name(model_id)
    if os.path.isdir(model_path):
        spec = importlib.util.spec_from_file_location(
            module_name, os.path.join(model_path, "__init__.py"), submodule_search_locations=[model_path]
        )
    else:
        spec = importlib.util.spec_from_file_location(module_name, model_path)
    if spec is None or spec.loader is None:
        raise _StartupError(f"cannot load model from {model_path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001
        raise _StartupError(f"importing the model failed: {describe_exception(exc)}") from exc
    return module


def _find_model_class(module, base_class: type, base_class_path: str) -> type:
    subclasses: dict[int, type] = {}
    for value in list(vars(module).values()):
        if isinstance(value, type) and value is not base_class and issubclass(value, base_class):
            if not getattr(value, "__abstractmethods__", None):
                subclasses[id(value)] = value
    # Prefer classes the model defines itself over subclasses it merely imported.
    own_prefix = module.__name__ + "."
    defined_here = [c for c in subclasses.values() if c.__module__ == module.__name__ or c.__module__.startswith(own_prefix)]
    candidates = defined_here or list(subclasses.values())
    if not candidates:
        raise _StartupError(f"no concrete subclass of {base_class_path} found in the model")
    if len(candidates) > 1:
        names = ", ".join(sorted(c.__name__ for c in candidates))
        raise _StartupError(f"expected exactly one subclass of {base_class_path}, found {len(candidates)}: {names}")
    return candidates[0]


def serve_request(model, request: dict, max_output_bytes: int) -> str:
    """Make the request's calls in order; return the encoded reply line (without newline)."""
    cycle = request.get("cycle")
    exec_time_ms = 0.0
    output = None
    for call in request["calls"]:
        method_name = call["method"]
        method = getattr(model, method_name, None)
        if not callable(method):
            return _failure(cycle, exec_time_ms, f"model has no method {method_name!r}")
        started = time.perf_counter()
        try:
            output = method(*call.get("args", ()), **call.get("kwargs", {}))
        except BaseException as exc:  # noqa: BLE001 - SystemExit and MemoryError are model failures too
            exec_time_ms += (time.perf_counter() - started) * 1000.0
            return _failure(cycle, exec_time_ms, describe_exception(exc))
        exec_time_ms += (time.perf_counter() - started) * 1000.0

    problem = find_unserialisable(output)
    if problem is not None:
        return _failure(cycle, exec_time_ms, f"output not serialisable: {problem}")
    try:
        output_json = json.dumps(output, allow_nan=False, separators=(",", ":"))
    except (ValueError, TypeError, RecursionError) as exc:
        return _failure(cycle, exec_time_ms, f"output not serialisable: {describe_exception(exc)}")
    output_bytes = len(output_json)  # ASCII: dumps escapes everything else
    if output_bytes > max_output_bytes:
        return _failure(cycle, exec_time_ms, f"output too large: {output_bytes} bytes > {max_output_bytes}")
    # The output is already encoded: splice it in rather than encoding it twice.
    return '{"cycle":%s,"ok":true,"exec_time_ms":%s,"output":%s}' % (
        json.dumps(cycle),
        json.dumps(round(exec_time_ms, 3)),
        output_json,
    )


def _failure(cycle, exec_time_ms: float, detail: str) -> str:
    return json.dumps(
        {"cycle": cycle, "ok": False, "exec_time_ms": round(exec_time_ms, 3), "detail": _truncate(detail)},
        separators=(",", ":"),
    )


def find_unserialisable(value, path: str = "$", depth: int = 0) -> str | None:
    """Where `value` is not plain JSON, described; None if it is.

    Stricter than json.dumps on purpose: numpy scalars subclass float/int and would be encoded
    silently, but the reference runner rejects them, so only the exact builtin types pass.
    """
    if depth > MAX_OUTPUT_DEPTH:
        return f"{path} is nested deeper than {MAX_OUTPUT_DEPTH} levels"
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            return f"{path} is {value!r} (NaN and infinity are not valid JSON)"
        return None
    if kind in _JSON_SCALAR_TYPES:
        return None
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return f"{path} has a non-string key {_short_repr(key)}"
            problem = find_unserialisable(item, f"{path}.{key}", depth + 1)
            if problem is not None:
                return problem
        return None
    if kind is list or kind is tuple:
        for index, item in enumerate(value):
            problem = find_unserialisable(item, f"{path}[{index}]", depth + 1)
            if problem is not None:
                return problem
        return None
    type_name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return f"{path} is a {type_name}"


def describe_exception(exc: BaseException) -> str:
    """`ValueError: boom (at model.py:12 in predict)`: the message plus the innermost frame."""
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a model's __str__ may raise too
        message = "<unprintable>"
    summary = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if isinstance(exc, SyntaxError):
        return _truncate(summary)  # the message already names the file and line
    innermost = None
    frame = exc.__traceback__
    while frame is not None:
        if not frame.tb_frame.f_code.co_filename.startswith("<frozen "):  # import machinery
            innermost = frame
        frame = frame.tb_next
    if innermost is not None:
        code = innermost.tb_frame.f_code
        summary += f" (at {os.path.basename(code.co_filename)}:{innermost.tb_lineno} in {code.co_name})"
    return _truncate(summary)


def _short_repr(value) -> str:
    try:
        return _truncate(repr(value), 80)
    except Exception:  # noqa: BLE001
        return f"<{type(value).__name__}>"


def _truncate(text: str, max_chars: int = MAX_DETAIL_CHARS) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def _send(fd: int, message: dict) -> None:
    _send_encoded(fd, json.dumps(message, separators=(",", ":")))


def _send_encoded(fd: int, line: str) -> None:
    data = memoryview((line + "\n").encode("ascii", "backslashreplace"))
    while data:
        written = os.write(fd, data)
        data = data[written:]


# --- the fork server -----------------------------------------------------------------------------
#
# In a privileged sandbox, one process per session (the *fork server*) runs in a bwrap sandbox
# that can see every model of the session and keeps CAP_SYS_ADMIN and CAP_NET_ADMIN. For each
# model it forks; the child enters new PID, mount, network, IPC and UTS namespaces and forks the
# model's supervisor, PID 1 there, which hides what the model must not see (the other models, the
# fork server's /tmp, its /proc) and drops those two capabilities before anything else runs. The
# interpreter and this module are then one copy for all models (copy-on-write), not one per model:
# docs/operations.md, "1,000 local models".
#
# Control socket (fd given on the command line, SOCK_SEQPACKET): the coordinator sends one JSON
# message per model, {"token": n, "config": <worker config>, "sandbox": {...}}, with the model's
# request pipe (read end) and reply pipe (write end) attached (SCM_RIGHTS). The supervisor answers
# {"token": n, "ok": true} on it (the kernel attaches its pid in the coordinator's namespace:
# SO_PASSCRED) or {"token": n, "ok": false, "detail": ...}, then closes it.

FORK_SERVER_FLAG = "--fork-server"
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
SUPERVISOR_CAPABILITY_NUMBERS = (5, 6, 7, 8)  # CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SETPCAP
# What bwrap also keeps read-only in a fresh /proc.
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus")
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
MAX_CONTROL_MESSAGE_BYTES = 1 << 20


def _fork_server(control_fd: int) -> None:
    """Fork one sandboxed model per request until the coordinator closes the control socket."""
    import gc
    import select
    import socket

    # Imported here, once for all models, what every model's processes import anyway.
    import ctypes  # noqa: F401
    import fcntl  # noqa: F401
    import selectors  # noqa: F401
    import struct  # noqa: F401

    _libc()
    control = socket.socket(fileno=control_fd)
    gc.freeze()  # what is imported now is shared by every model: no collection should touch it
    poller = select.poll()  # not select(2): the descriptor's number may be past 1024
    poller.register(control, select.POLLIN)
    while True:
        _reap_own_children()  # the intermediate children, and supervisors ended (reparented here)
        if not poller.poll(1000):
            continue
        try:
            message, fds, _, _ = socket.recv_fds(control, MAX_CONTROL_MESSAGE_BYTES, 2)
        except OSError:
            os._exit(0)
        if not message:
            os._exit(0)  # the coordinator closed the session (or died: bwrap ends us anyway)
        try:
            request = json.loads(message)
            child = os.fork()
        except BaseException as exc:  # noqa: BLE001 - one bad request must not end the others
            _report(control, {"token": None, "ok": False, "detail": f"fork server: {describe_exception(exc)}"})
            child = -1
        if child == 0:
            _start_model(control, request, fds)  # never returns
        for fd in fds:
            os.close(fd)


def _report(control, message: dict) -> None:
    try:
        control.send(json.dumps(message).encode())
    except OSError:
        pass


def _start_model(control, request: dict, fds: list[int]) -> None:
    """In the fork server's child: new namespaces, then the model's supervisor as their PID 1."""
    token = request.get("token")
    try:
        if len(fds) != 2:
            raise OSError(f"expected the model's two pipes, got {len(fds)} descriptors")
        os.dup2(fds[0], 0)
        os.dup2(fds[1], 1)
        os.closerange(3, control.fileno())
        os.closerange(control.fileno() + 1, 1 << 16)
        _libc_check(_libc().unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
        if os.fork() != 0:
            os._exit(0)  # the supervisor, PID 1 of the new namespace, is reparented to the fork server
        _enter_model_sandbox(request["sandbox"])
    except BaseException as exc:  # noqa: BLE001 - reported to the coordinator, never half-confined
        _report(control, {"token": token, "ok": False, "detail": _truncate(f"sandbox: {describe_exception(exc)}")})
        os._exit(1)
    _report(control, {"token": token, "ok": True})
    control.close()
    importlib.invalidate_caches()
    _run_model(request["config"])


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = lambda text: None if text is None else text.encode()  # noqa: E731
    _libc_check(_libc().mount(encode(source), encode(target), encode(fstype), flags, encode(data)), f"mount {target}")


def _enter_model_sandbox(spec: dict) -> None:
    """As PID 1 of fresh namespaces (still root with the fork server's capabilities): show the
    model only its own directory of the models directory, its own /tmp, /dev/shm, /dev/pts and /proc, bring
    its loopback up, then drop CAP_SYS_ADMIN and CAP_NET_ADMIN for good."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here reaches the fork server
    tmp_bytes = int(spec["tmp_bytes"])
    covers = [("/tmp", f"size={tmp_bytes},mode=1777"),
              ("/dev/shm", f"size={max(tmp_bytes // 4, 1 << 20)},mode=1777"),
              (spec["models_dir"], "size=65536,mode=0755")]
    keep = sorted(set(spec["keep"]), key=lambda path: path.count("/"))
    # Held open before the covers hide them, bound back after.
    hidden = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for path in keep
              if os.path.exists(path) and any(_is_within(path, cover) for cover, _ in covers)}
    covered = set()
    for cover, options in covers:
        if os.path.isdir(cover):  # a cover inside an earlier one is gone already
            _mount("tmpfs", cover, "tmpfs", MS_NOSUID | MS_NODEV, options)
            covered.add(cover)
    for path, fd in hidden.items():
        if not os.path.exists(path):  # else visible through a path bound before it
            parent = os.path.dirname(path)
            os.makedirs(parent, mode=0o755, exist_ok=True)
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.mkdir(path, 0o755)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o444))
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.close(fd)
    if spec["models_dir"] in covered:
        _mount(None, spec["models_dir"], None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=65536,mode=0755")
    # A devpts of its own (as bwrap's --dev makes): the fork server's is shared by every model.
    _mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_READ_ONLY:
        path = f"/proc/{name}"
        if os.path.exists(path):
            _mount(path, path, None, MS_BIND | MS_REC)
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _loopback_up()
    _drop_fork_server_capabilities()
    os.setsid()
    os.chdir(spec["working_directory"])
    os.environ["PWD"] = spec["working_directory"]  # as bwrap's --chdir sets it


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _loopback_up() -> None:
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(probe, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(probe, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def _drop_fork_server_capabilities() -> None:
    """Keep only the supervisor's capabilities (sandbox.SUPERVISOR_CAPABILITIES), in every set: the
    fork server's CAP_SYS_ADMIN and CAP_NET_ADMIN are gone, and the bounding set holds nothing else."""
    _empty_bounding_set(keep=SUPERVISOR_CAPABILITY_NUMBERS)
    _capset(sum(1 << number for number in SUPERVISOR_CAPABILITY_NUMBERS))


if __name__ == "__main__":
    main()
