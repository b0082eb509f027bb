"""How `crunch-dagster serve`, `crunch-dagster api` and the demo stop: a SIGTERM or SIGINT to the
command's own process (what a process manager or `kill PID` sends) is a planned stop.

A planned stop, in order:
1. nothing new is launched (the daemon stops first, where it is a program of its own);
2. the runs in flight are cancelled through Dagster (`report_run_canceling` and the launcher's
   `terminate`: the run worker interrupts its step, closes its model sessions and reports the run
   CANCELED), waiting up to a bound. A planned stop is not a failure: no red run, no alert, and on
   the next start the cycle sensor starts the hour's window again (it fills the missed cycles);
3. the command's programs are stopped, then every process still below the command (a run worker,
   a model process, a code server waiting for its runs) is ended: SIGTERM, then SIGKILL. The
   command is a child subreaper (prctl), so an orphan of its tree comes back to it, not to init;
4. the runs that are still not finished (their worker was killed) are marked CANCELED;
5. the embedded PostgreSQL is stopped once no live process uses it (fast shutdown), also when
   the last of its users was killed and could not detach.

Steps 2 and 4 run in a process of their own (RunKeeper), so that the command itself never holds
the embedded server; it loads while the daemon stops.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PLANNED_STOP = "planned stop"
# How long the runs in flight get to end by themselves (a tick in flight, its models' calls).
CANCEL_WAIT_SECONDS = 45.0
# How long a process asked to end (SIGTERM) gets before it is killed.
TERM_GRACE_SECONDS = 10.0
SERVER_STOP_SECONDS = 30.0
RUN_STATUSES_IN_FLIGHT = ("NOT_STARTED", "QUEUED", "STARTING", "STARTED", "CANCELING")

# The tag Dagster's launcher puts on a run it sends to a code server (not exported by Dagster;
# tests/test_dagster_internals.py holds it equal to Dagster's own).
GRPC_INFO_TAG = ".dagster/grpc_info"


class StopRequested(KeyboardInterrupt):
    """Raised in the main thread by the first SIGTERM or SIGINT: a KeyboardInterrupt, so that
    whatever the command is doing is unwound as by a Ctrl-C, its cleanup included."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class StopSignals:
    received: list[int] = field(default_factory=list)

    @property
    def requested(self) -> bool:
        return bool(self.received)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopSignals]:
    """The first SIGTERM/SIGINT raises StopRequested in the main thread; later ones are only
    recorded, so that the stop itself is never interrupted (each of its waits is bounded)."""
    state = StopSignals()

    def handler(signum, _frame):
        state.received.append(signum)
        if len(state.received) == 1:
            raise StopRequested(signum)

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield state
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def become_subreaper() -> bool:
    """Orphaned descendants are reparented to this process instead of init (Linux >= 3.4)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


# --- processes ------------------------------------------------------------------------------------

def wait_reaping(children: Iterable[subprocess.Popen], poll_seconds: float = 0.2) -> subprocess.Popen:
    """Wait until one of `children` exits, and reap every orphan this subreaper adopted meanwhile:
    an adopted process that died stays a zombie until its new parent reaps it, and a zombie still
    counts as running for whoever watches it (the database holder watches the postmaster, which
    comes here when pg_ctl exits). Returns the child that exited (its returncode set)."""
    by_pid = {child.pid: child for child in children}
    while True:
        for child in by_pid.values():
            if child.returncode is not None:
                return child
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid == 0:
                break
            if pid in by_pid:
                by_pid[pid].returncode = os.waitstatus_to_exitcode(status)
        time.sleep(poll_seconds)  # a poll of exits, not a synchronisation

def postmaster_pid(pgdata: Path | None) -> int | None:
    """The running postmaster of pgdata (from postmaster.pid), if any."""
    import psutil

    if pgdata is None:
        return None
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, IndexError, ValueError):
        return None
    try:
        process = psutil.Process(pid)
        return pid if process.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


def server_pids(pgdata: Path | None) -> set[int]:
    """The embedded server's processes (its postmaster and the postmaster's children): ended by
    stop_embedded_server, never by a kill that would leave it to crash recovery."""
    import psutil

    pid = postmaster_pid(pgdata)
    if pid is None:
        return set()
    try:
        return {pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))}
    except psutil.Error:
        return {pid}


def descendants(exclude: Iterable[int] = ()) -> list:
    """This process's live descendants (psutil.Process), zombies reaped, `exclude` left out."""
    import psutil

    excluded = set(exclude)
    found = []
    for child in psutil.Process().children(recursive=True):
        if child.pid in excluded:
            continue
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                if child.ppid() == os.getpid():
                    _reap(child.pid)
                continue
        except psutil.Error:
            continue
        found.append(child)
    return found


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def end_descendants(keep: Callable[[], Iterable[int]] = lambda: (), grace_seconds: float = TERM_GRACE_SECONDS,
                    deadline_seconds: float = 60.0, log: Callable[[str], None] = lambda _: None) -> list[int]:
    """SIGTERM every descendant but `keep()`, wait up to grace_seconds, then freeze (SIGSTOP) and
    SIGKILL what is left, again until nothing is left: a killed process's orphans come back to
    this subreaper and are found on the next pass. Returns the pids that had to be killed."""
    import psutil

    survivors = descendants(keep())
    for process in survivors:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    deadline = time.monotonic() + grace_seconds
    while survivors and time.monotonic() < deadline:
        time.sleep(0.1)  # bounded poll of processes we do not own the wait of
        survivors = descendants(keep())
    killed: list[int] = []
    stop_at = time.monotonic() + deadline_seconds
    while survivors and time.monotonic() < stop_at:
        for process in survivors:
            with contextlib.suppress(psutil.Error):
                process.suspend()
        for process in survivors:
            with contextlib.suppress(psutil.Error):
                process.kill()
                killed.append(process.pid)
        psutil.wait_procs(survivors, timeout=2)
        survivors = descendants(keep())
    if killed:
        log(f"killed {len(killed)} process(es) that did not end when asked: {sorted(set(killed))}")
    return killed


def stop_embedded_server(pgdata: Path | None, timeout_seconds: float = SERVER_STOP_SECONDS,
                         log: Callable[[str], None] = lambda _: None) -> bool:
    """Stop pgdata's server once no live process uses it (its handle list pruned of the dead):
    SIGINT, PostgreSQL's fast shutdown (clients disconnected, a clean checkpoint), then SIGQUIT at
    the deadline. Returns True when no server of pgdata runs afterwards."""
    import psutil

    pid = postmaster_pid(pgdata)
    if pid is None:
        return True
    if (pgdata / ".handle_pids.json").exists():
        from resources.database_url import prune_dead_handles

        users = prune_dead_handles(pgdata)
        if users:
            log(f"the embedded PostgreSQL stays up: processes {users} still use it")
            return False
    log(f"stopping the embedded PostgreSQL (postmaster pid {pid}): no process uses it any more")
    for signum, wait in ((signal.SIGINT, timeout_seconds), (signal.SIGQUIT, 10.0)):
        try:
            os.kill(pid, signum)
            psutil.Process(pid).wait(timeout=wait)
            return True
        except (ProcessLookupError, psutil.NoSuchProcess):
            return True
        except psutil.TimeoutExpired:
            continue
    return postmaster_pid(pgdata) is None


# --- runs -----------------------------------------------------------------------------------------

def _runs_in_flight(instance) -> list:
    import dagster as dg

    statuses = [dg.DagsterRunStatus[name] for name in RUN_STATUSES_IN_FLIGHT]
    return list(instance.get_runs(filters=dg.RunsFilter(statuses=statuses)))


def _launched_to_a_code_server(run) -> bool:
    """Launched by this deployment's launcher to a code server (which can cancel it); a run
    executed in a process of its own (a `replay`, a test) has no such tag and is left alone."""
    return GRPC_INFO_TAG in run.tags


def cancel_runs(instance, reason: str, wait_seconds: float = CANCEL_WAIT_SECONDS,
                log: Callable[[str], None] = print) -> dict[str, str]:
    """Cancel the runs in flight: a run never launched (NOT_STARTED, QUEUED) is marked CANCELED;
    a launched one is terminated through its launcher (marked CANCELING; its worker interrupts
    the step and reports CANCELED). Waits up to wait_seconds for them to finish; returns each
    run's status at the end."""
    import dagster as dg

    asked: list[str] = []
    for run in _runs_in_flight(instance):
        try:
            if run.status in (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED):
                instance.report_run_canceled(run, message=f"{reason}: canceled before it started")
            elif run.status == dg.DagsterRunStatus.CANCELING:
                pass
            elif _launched_to_a_code_server(run):
                instance.report_run_canceling(run, message=f"{reason}: canceling the run")
                instance.run_launcher.terminate(run.run_id)
            else:
                continue
        except Exception as error:  # noqa: BLE001 - one run that cannot be reached must not keep the others
            log(f"run {run.run_id}: could not ask it to cancel ({type(error).__name__}: {error}); it is settled after the stop")
        asked.append(run.run_id)
    deadline = time.monotonic() + wait_seconds
    statuses: dict[str, str] = {}
    while True:
        statuses = {run_id: (run.status.value if (run := instance.get_run_by_id(run_id)) else "DELETED") for run_id in asked}
        if all(status not in RUN_STATUSES_IN_FLIGHT for status in statuses.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # bounded poll of other processes' progress
    if asked:
        log(f"runs in flight at the stop: {', '.join(f'{run_id[:8]} {status}' for run_id, status in statuses.items())}")
    return statuses


def settle_runs(instance, reason: str, log: Callable[[str], None] = print) -> list[str]:
    """After the deployment's processes stopped, no process is left to finish a run of it that is
    still in flight (never launched, or launched to one of its code servers): each is marked
    CANCELED, not FAILURE (the stop was planned). Runs executed in processes of their own (a
    replay in another shell) are left alone."""
    import dagster as dg

    settled = []
    for run in _runs_in_flight(instance):
        never_launched = run.status in (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED)
        if never_launched or _launched_to_a_code_server(run):
            instance.report_run_canceled(run, message=f"{reason}: its process stopped with the deployment")
            settled.append(run.run_id)
    if settled:
        log(f"marked {len(settled)} run(s) left in flight CANCELED: {[run_id[:8] for run_id in settled]}")
    return settled


class RunKeeper:
    """The runs' side of a stop, in a process of its own (`python -m crunch_assets.cli.lifetime`):
    it loads Dagster and opens the instance while the command stops its daemon, then cancels
    (`cancel`) and, once the processes are gone, settles (`settle`) on request. This process never
    attaches to the embedded server itself; the keeper detaches when it exits. Every call is
    bounded and never raises: a keeper that fails only leaves the runs to `settle` or to run
    monitoring at the next start."""

    def __init__(self, env: dict[str, str], instance_dir: Path | None = None, reason: str = PLANNED_STOP,
                 wait_seconds: float = CANCEL_WAIT_SECONDS, log: Callable[[str], None] = print):
        self.log = log
        self.wait_seconds = wait_seconds
        command = [sys.executable, "-m", "crunch_assets.cli.lifetime", "--reason", reason, "--wait-seconds", str(wait_seconds)]
        if instance_dir is not None:
            command += ["--instance-dir", str(instance_dir)]
        try:
            self.process: subprocess.Popen | None = subprocess.Popen(
                command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        except OSError as error:
            log(f"the runs' keeper could not start ({error}); going on with the stop")
            self.process = None

    def _ask(self, step: str, timeout_seconds: float) -> bool:
        import select

        if self.process is None or self.process.poll() is not None:
            return False
        try:
            self.process.stdin.write(step + "\n")
            self.process.stdin.flush()
        except OSError:
            return False
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = self.process.stdout.readline()
            if not line:  # it ended (its error is on stderr)
                return False
            if line.strip() == f"done {step}":
                return True
        self.log(f"{step} of the runs did not finish within {timeout_seconds:.0f} s; going on with the stop")
        return False

    def cancel(self) -> bool:
        return self._ask("cancel", self.wait_seconds + KEEPER_LOAD_SECONDS)

    def settle(self) -> bool:
        return self._ask("settle", KEEPER_LOAD_SECONDS)

    def close(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# Loading Dagster and the instance on a loaded machine, with room to spare.
KEEPER_LOAD_SECONDS = 120.0


def main(argv: list[str] | None = None) -> int:
    """The keeper: reads `cancel` and `settle` from stdin, answers `done <step>` on stdout."""
    parser = argparse.ArgumentParser(description="Cancel (before a planned stop) or settle (after it) the runs in flight, "
                                                 "as told on stdin.")
    parser.add_argument("--instance-dir", type=Path, default=None,
                        help="the directory of the instance's dagster.yaml (default: $DAGSTER_HOME)")
    parser.add_argument("--reason", default=PLANNED_STOP)
    parser.add_argument("--wait-seconds", type=float, default=CANCEL_WAIT_SECONDS)
    args = parser.parse_args(argv)
    import dagster as dg

    def log(line: str) -> None:
        print(f"runs: {line}", file=sys.stderr, flush=True)

    instance = dg.DagsterInstance.from_config(str(args.instance_dir)) if args.instance_dir else dg.DagsterInstance.get()
    with instance:
        for line in sys.stdin:
            step = line.strip()
            try:
                if step == "cancel":
                    cancel_runs(instance, args.reason, args.wait_seconds, log)
                elif step == "settle":
                    settle_runs(instance, args.reason, log)
                else:
                    log(f"unknown step {step!r}")
                    continue
            except Exception as error:  # noqa: BLE001 - reported; the stop goes on without it
                log(f"{step} failed: {type(error).__name__}: {error}")
            print(f"done {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
