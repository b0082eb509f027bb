"""Runs ONE participant model inside its own OS process and serves the coordinator's calls.

Started by `LocalModelRunner` as `python local_worker.py '<json config>'` (by file path, not with
`-m`, so no package `__init__` of the project runs here). Deliberately stdlib-only (orjson, when the
interpreter has it, only decodes requests faster) with cheap imports: a hundred of these start on
a couple of cores.

Protocol (newline-delimited JSON; `json.dumps` never emits a raw newline):
- fd 0 carries requests, the original fd 1 carries replies. Before the model is imported both are
  moved to private descriptors: fd 0 then reads /dev/null and fd 1 points at stderr, so the model's
  own prints (or reads) cannot corrupt the protocol.
- First line out is the start-up handshake:
      {"type": "ready", "class_name": ..., "startup_ms": ..., "pid": <the worker's pid>}
      {"type": "startup_failed", "detail": ...}          (then the process exits)
- Then, per cycle, one request line in and one reply line out (a range run may write several
  cycles' requests at once; they are read and answered one after the other, in order):
      in:  {"cycle": n, "calls": [{"method": ..., "args": [...], "kwargs": {...}}, ...]}
      out: {"cycle": n, "ok": true, "exec_time_ms": ..., "output": <last call's output>}
      out: {"cycle": n, "ok": false, "exec_time_ms": ..., "detail": ...}
- End of input (the coordinator closed the pipe or died) makes the worker exit.

Processes (see `local.py` for why this design): the process the runner starts forks at once. The
parent stays behind as the *supervisor*: a child subreaper (prctl PR_SET_CHILD_SUBREAPER) that
imports nothing of the model, ignores SIGTERM and only waits. The child is the *worker* that
imports the model and serves the protocol. Every process the model starts is therefore a
descendant of the supervisor for as long as it lives, even after setsid() or a double fork.
- End of each cycle: the coordinator reads /proc once for all its models; a model with processes
  detached from its worker (orphans reparented to the supervisor, processes that left the
  worker's process group or session) gets a sweep request, and the worker SIGKILLs them, with
  everything below them, and reaps its own:
      in:  {"sweep": true}
      out: {"type": "swept", "killed": <count>}
  Children that stay attached (a pool, a helper server) may live on between calls.
- End of the worker (end of input, a crash, SIGTERM at session close, SIGKILL): the supervisor
  SIGKILLs every descendant it still has, reaps them, and exits as the worker did (same exit code
  or signal). It holds the reply pipe open until then, so the coordinator's EOF means that
  everything the model started is gone.
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
from typing import Callable, NamedTuple  # noqa: E402

try:  # the coordinator's environment has orjson: requests decode several times faster, same values
    import orjson  # noqa: E402

    def decode_request(line):
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:  # NaN / Infinity literals, integers past 64 bits: json reads them
            return json.loads(line)
except ImportError:  # pragma: no cover - a worker started by another interpreter
    decode_request = json.loads

FALLBACK_MODULE_NAME = "participant_model"
SWEEP_REQUEST = b'{"sweep":true}\n'
MAX_DETAIL_CHARS = 1000
MAX_OUTPUT_DEPTH = 100
_JSON_SCALAR_TYPES = (str, int, bool, type(None))


def main() -> None:
    config = json.loads(sys.argv[1])
    _limit_resources(config["memory_limit_mb"])
    supervisor_pid = _split_into_supervisor_and_worker()  # only the worker returns
    requests_in, replies_out_fd = _take_over_stdio()
    worker_pid = os.getpid()

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
        if line == SWEEP_REQUEST:
            killed = end_detached_processes(supervisor_pid, worker_pid)
            _send(replies_out_fd, {"type": "swept", "killed": killed})
            continue
        try:
            reply = serve_request(model, decode_request(line), max_output_bytes)
        except BaseException as exc:  # noqa: BLE001 - e.g. MemoryError while decoding the request
            reply = '{"cycle":null,"ok":false,"exec_time_ms":0,"detail":%s}' % json.dumps(
                _truncate("worker error: " + describe_exception(exc))
            )
        _send_encoded(replies_out_fd, reply)


class _StartupError(Exception):
    """A start-up problem whose message is already the full explanation."""


def _limit_resources(memory_limit_mb: int) -> None:
    if memory_limit_mb and memory_limit_mb > 0:
        limit_bytes = int(memory_limit_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    # A crashing model should not litter its directory with core files.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


# --- the model's processes ----------------------------------------------------------------------

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
FREEZE_SECONDS = 2.0
REAP_SECONDS = 2.0
_STOPPED_STATES = frozenset("TtZXx")


class ProcessInfo(NamedTuple):
    """The fields of /proc/<pid>/stat used here."""

    ppid: int
    pgid: int
    sid: int
    state: str
    start_ticks: int  # start time after boot, in clock ticks: with the pid, the process's identity


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


def detached_processes(
    table: dict[int, ProcessInfo], supervisor_pid: int, worker_pid: int,
    children: dict[int, list[int]] | None = None,
) -> set[int]:
    """The model's processes no longer attached to the worker: the supervisor's children other than
    the worker (orphans), and the worker's descendants that left its process group or session, each
    with everything below it. `children`: the table's children_by_parent, when already made."""
    worker = table.get(worker_pid)
    if worker is None:
        return set()
    children = children_by_parent(table) if children is None else children
    found: set[int] = set()
    stack = [(pid, True) for pid in children.get(supervisor_pid, ()) if pid != worker_pid]
    stack += [(pid, False) for pid in children.get(worker_pid, ())]
    while stack:
        pid, detached = stack.pop()
        info = table[pid]
        detached = detached or info.pgid != worker.pgid or info.sid != worker.sid
        if detached:
            found.add(pid)
        stack.extend((child, detached) for child in children.get(pid, ()))
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
    select: Callable[[dict[int, ProcessInfo]], set[int]], seconds: float = FREEZE_SECONDS
) -> dict[int, ProcessInfo]:
    """SIGKILL the processes `select` picks from the process table, without letting any slip away.

    Killing processes one by one races with their forking (a child born after the scan is missed)
    and with their exits (their orphans move to the subreaper). So they are first SIGSTOPped, and
    the table scanned again, until a scan picks nothing new and every picked process is stopped: a
    stopped process can neither fork nor exit, and orphans of anything that exited meanwhile were
    reparented within the tree and picked by the next scan. Then all are SIGKILLed at once.
    `select` must never pick the caller or its ancestors. Returns what was killed, by pid."""
    frozen: dict[int, ProcessInfo] = {}
    deadline = time.monotonic() + seconds
    while True:
        table = process_table()
        fresh = [pid for pid in select(table) if pid not in frozen]
        for pid in fresh:
            if signal_process(pid, table[pid].start_ticks, signal.SIGSTOP):
                frozen[pid] = table[pid]
        all_stopped = all(pid not in table or table[pid].state in _STOPPED_STATES for pid in frozen)
        if (not fresh and all_stopped) or time.monotonic() >= deadline:
            break  # past the deadline (a process stuck in the kernel), kill what is known
        if not fresh:
            time.sleep(0.001)  # SIGSTOP is delivered asynchronously
    for pid, info in frozen.items():
        signal_process(pid, info.start_ticks, signal.SIGKILL)
    return frozen


def kill_process_tree(root_pid: int, seconds: float = FREEZE_SECONDS) -> dict[int, ProcessInfo]:
    """SIGKILL `root_pid` and all its descendants (see freeze_and_kill). Used by the coordinator
    on a supervisor: being a subreaper, it has every process of its model below it."""
    return freeze_and_kill(lambda table: ({root_pid} | descendants(table, root_pid)) if root_pid in table else set(),
                           seconds)


def last_pid() -> int | None:
    """The pid most recently handed out in this PID namespace (/proc/loadavg), or None."""
    try:
        with open("/proc/loadavg", "rb") as loadavg:
            return int(loadavg.read().split()[4])
    except (OSError, ValueError, IndexError):
        return None


def end_detached_processes(supervisor_pid: int, worker_pid: int) -> int:
    """In the worker: SIGKILL the model's processes that detached from it, reap those that are its
    own children (else they would stay zombies; the model's own handles to them then see them gone),
    and return how many were killed."""
    if os.getppid() != supervisor_pid:
        return 0  # no supervisor any more (killed from outside): nothing here can be made safe
    killed = freeze_and_kill(lambda table: detached_processes(table, supervisor_pid, worker_pid))
    own_children = [pid for pid, info in killed.items() if info.ppid == worker_pid]
    deadline = time.monotonic() + REAP_SECONDS
    while own_children and time.monotonic() < deadline:
        for pid in list(own_children):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            except ChildProcessError:
                pass
            own_children.remove(pid)
        if own_children:
            time.sleep(0.001)
    return len(killed)


def _become_subreaper() -> bool:
    """Orphaned descendants are reparented to this process instead of init (Linux >= 3.4)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _split_into_supervisor_and_worker() -> int:
    """Fork: the parent stays as the supervisor (never returns), the child returns the supervisor's
    pid and goes on as the worker."""
    _become_subreaper()
    # Ignored from before the fork: SIGTERM to the process group at session close must end the
    # worker, never the supervisor (its death would hand the model's processes to init).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    supervisor_pid = os.getpid()
    worker_pid = os.fork()
    if worker_pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return supervisor_pid
    _supervise(worker_pid)
    os._exit(1)  # not reached


def _supervise(worker_pid: int) -> None:
    """Wait for the worker, reaping orphans as they die; then end everything left and exit like it."""
    devnull_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull_fd, 0)  # requests are the worker's; stdout stays open until this process exits
    os.close(devnull_fd)
    worker_status = None
    while worker_status is None:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == worker_pid:
            worker_status = status
    me = os.getpid()
    freeze_and_kill(lambda table: descendants(table, me))
    deadline = time.monotonic() + REAP_SECONDS
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.001)
        except ChildProcessError:
            break
    _exit_like(worker_status)


def _exit_like(status: int | None) -> None:
    """Exit with the worker's exit code, or die of the signal that killed it."""
    if status is not None and os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # SIGKILL cannot be handled, nor needs to be
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)  # a signal whose default is not to terminate
    if status is not None and os.WIFEXITED(status):
        os._exit(os.WEXITSTATUS(status))
    os._exit(1)


def _take_over_stdio():
    """Keep private copies of fds 0/1 for the protocol; give the model /dev/null and stderr."""
    requests_in = os.fdopen(os.dup(0), "rb")
    replies_out_fd = os.dup(1)
    devnull_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull_fd, 0)
    os.close(devnull_fd)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return requests_in, replies_out_fd


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


if __name__ == "__main__":
    main()
