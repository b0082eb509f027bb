"""Runs ONE participant model inside its own OS process and serves the coordinator's calls.

Started by `LocalModelRunner` as `python local_worker.py '<json config>'` (by file path, not with
`-m`, so no package `__init__` of the project runs here). Deliberately stdlib-only with cheap
imports: a hundred of these start on a couple of cores.

Protocol (newline-delimited JSON; `json.dumps` never emits a raw newline):
- fd 0 carries requests, the original fd 1 carries replies. Before the model is imported both are
  moved to private descriptors: fd 0 then reads /dev/null and fd 1 points at stderr, so the model's
  own prints (or reads) cannot corrupt the protocol.
- First line out is the start-up handshake:
      {"type": "ready", "class_name": ..., "startup_ms": ...}
      {"type": "startup_failed", "detail": ...}          (then the process exits)
- Then, per cycle, one request line in and one reply line out:
      in:  {"cycle": n, "calls": [{"method": ..., "args": [...], "kwargs": {...}}, ...]}
      out: {"cycle": n, "ok": true, "exec_time_ms": ..., "output": <last call's output>}
      out: {"cycle": n, "ok": false, "exec_time_ms": ..., "detail": ...}
- End of input (the coordinator closed the pipe or died) makes the worker exit.
"""

from __future__ import annotations

import os
import sys

# Running by file path puts this directory first on sys.path, where `base.py` (which imports
# dagster) would shadow any model's or base package's `base` module.
_WORKER_DIR = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _WORKER_DIR:
    del sys.path[0]

import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402

FALLBACK_MODULE_NAME = "participant_model"
MAX_DETAIL_CHARS = 1000
MAX_OUTPUT_DEPTH = 100
_JSON_SCALAR_TYPES = (str, int, bool, type(None))


def main() -> None:
    config = json.loads(sys.argv[1])
    _limit_resources(config["memory_limit_mb"])
    requests_in, replies_out_fd = _take_over_stdio()

    started = time.perf_counter()
    try:
        model = _instantiate_model(config["model_path"], config["model_id"], config["base_class"])
    except BaseException as exc:  # noqa: BLE001 - any failure is reported, not raised
        detail = exc.args[0] if isinstance(exc, _StartupError) else describe_exception(exc)
        _send(replies_out_fd, {"type": "startup_failed", "detail": _truncate(detail)})
        os._exit(0)
    startup_ms = (time.perf_counter() - started) * 1000.0
    _send(replies_out_fd, {"type": "ready", "class_name": type(model).__name__, "startup_ms": round(startup_ms, 3)})

    max_output_bytes = int(config["max_output_bytes"])
    while True:
        line = requests_in.readline()
        if not line:
            # os._exit: do not wait for threads the model may have left running.
            os._exit(0)
        try:
            reply = serve_request(model, json.loads(line), max_output_bytes)
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
