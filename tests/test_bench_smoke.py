"""Every bench/ command runs in its smoke mode (`--smoke`: tiny sizes, the same code path), each in
its own process as a person would run it, so that no benchmark rots unnoticed (bench_feed_backfill
once imported a module the engine had dropped and ran for nobody). A smoke run checks that the
command finishes with exit status 0 and prints its figures with the machine's load; the figures
themselves mean nothing at these sizes and are not asserted.

The commands run concurrently, a few at a time (most of a smoke run is waiting on start-ups and
cycles), longest first. A new bench/ command must be listed here: the first test fails otherwise.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BENCH = PROJECT_ROOT / "bench"

# command -> what its smoke output must contain (besides the smoke banner and a figure with the load)
SMOKE_COMMANDS: dict[str, tuple[str, ...]] = {
    "bench_many_competitions.py": ("due -> predictions stored, every competition", "database connections in use",
                                   "where the one database becomes the limit", "CPU per competition"),
    "bench_dagster_storage.py": ("Dagster tables:", "purge job", "exit 0"),
    "bench_live.py": ("cycles stored:", "due -> predictions stored", "CPU:"),
    "bench_rollups.py": ("ratio band", "checkpoint", "1-min load over the window"),
    "bench_reference.py": ("exported for the reference",),
    "bench_report_api.py": ("worst ratio",),
    "bench_scaffold.py": ("baseline: init",),
    "bench_replay.py": ("replayed", "storage per prediction"),
    "bench_feed_backfill.py": ("write path:", "0 rows changed"),
    "bench_copies.py": ("as planted", "the store,"),
    "bench_scores.py": ("scores step:", "spread", "CPU per 1,000 predictions"),
    "bench_api_abuse.py": ("POST", "slow-loris"),
    "bench_orchestrator_runner.py": ("all SUCCESS", "cycle: median", "run B ready before the boundary",
                                     "due -> answered, all", "CPU per cycle"),
    "bench_feed_fetch.py": ("fetch + parse:",),
    "bench_local_runner.py": ("target: every call answered", "holds"),
    "bench_model_scale.py": ("PSS", "MiB per model", "due -> answered", "run B ready before the boundary"),
    "bench_receipts.py": ("one model's receipt", "verdict ok"),
    "bench_contribution.py": ("with contribution s", "payout columns"),
}
# Modules the commands import or load, not commands.
MODULES = {"__init__.py", "benchkit.py", "chaos_competition.py", "live_competition.py", "netns_bed.py",
           "multi_host_models.py"}
# Commands whose whole run is a CI test already.
COVERED_ELSEWHERE = {
    "chaos.py": "tests/test_chaos.py runs bench/chaos.py's run_chaos in full (every kill, every check)",
    "multi_host.py": "tests/test_multi_host.py runs bench/multi_host.py's faults in full (as root)",
}
PARALLEL = 4
TIMEOUT_SECONDS = 420


@dataclass
class SmokeRun:
    returncode: int
    output: str
    seconds: float


def run_smoke(command: str) -> SmokeRun:
    # a clean environment: no database or Dagster home of the test session leaks into the command
    from resources.database_url import DATABASE_ENV_VARS

    env = {k: v for k, v in os.environ.items() if k not in (*DATABASE_ENV_VARS, "CRUNCH_DATA_DIR", "DAGSTER_HOME")}
    began = time.monotonic()
    try:
        completed = subprocess.run([sys.executable, str(BENCH / command), "--smoke"], cwd=PROJECT_ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout.decode(errors="replace") if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        return SmokeRun(-1, output + f"\n(timed out after {TIMEOUT_SECONDS} s)", time.monotonic() - began)
    return SmokeRun(completed.returncode, completed.stdout, time.monotonic() - began)


@pytest.fixture(scope="module")
def smoke_runs() -> dict[str, SmokeRun]:
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:  # in the listed order: the longest first
        futures = {command: pool.submit(run_smoke, command) for command in SMOKE_COMMANDS}
        return {command: future.result() for command, future in futures.items()}


@pytest.mark.bench_smoke
def test_every_bench_command_has_a_smoke_run():
    present = {path.name for path in BENCH.glob("*.py")}
    unlisted = present - set(SMOKE_COMMANDS) - MODULES - set(COVERED_ELSEWHERE)
    assert not unlisted, f"bench commands without a smoke run in CI: {sorted(unlisted)} (add them to SMOKE_COMMANDS)"
    assert not (set(SMOKE_COMMANDS) | MODULES | set(COVERED_ELSEWHERE)) - present, "listed files that are gone"
    for command in SMOKE_COMMANDS:
        assert "--smoke" in (BENCH / command).read_text(), f"{command} has no --smoke mode"


@pytest.mark.bench_smoke
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("command", list(SMOKE_COMMANDS))
def test_bench_command_runs_in_its_smoke_mode(command, smoke_runs):
    run = smoke_runs[command]
    tail = run.output[-4000:]
    assert run.returncode == 0, f"{command} --smoke exited {run.returncode} after {run.seconds:.0f} s:\n{tail}"
    assert "SMOKE MODE" in run.output, tail
    assert re.search(r"\[load \d+\.\d / \d+\.\d / \d+\.\d on \d+ cores\]", run.output), \
        f"{command}: no figure printed with the machine's load:\n{tail}"
    for expected in SMOKE_COMMANDS[command]:
        assert expected in run.output, f"{command}: {expected!r} missing from its output:\n{tail}"
    assert "FAILED" not in run.output and "Traceback" not in run.output, tail


# --- the shared helpers the figures rest on ---------------------------------------------------


def test_percentiles_are_nearest_rank_and_a_p99_needs_100_samples():
    sys.path.insert(0, str(PROJECT_ROOT))
    from bench import benchkit

    values = [float(v) for v in range(1, 101)]  # 1 .. 100
    assert benchkit.percentile(values, 0.5) == 50.0
    assert benchkit.percentile(values, 0.99) == 99.0
    assert benchkit.percentile(values, 1.0) == 100.0
    assert benchkit.percentile([3.0], 0.99) == 3.0
    assert "p99 99.000 s" in benchkit.tail_text(values)
    few = benchkit.tail_text(values[:10])  # ten cycles: the "p99" would only be their maximum
    assert "p99" not in few.split("(")[0] and "max 10.000 s" in few and "a p99 needs >= 100" in few


def test_a_noise_band_states_its_spread_and_the_regression_it_can_see():
    from bench import benchkit

    band = benchkit.band([17_200.0, 18_600.0, 22_100.0])  # the spread bench_scores showed for one code
    assert band.median == 18_600.0
    assert round(band.spread_pct) == 26
    assert "detects a regression > 26 %" in band.describe("predictions/s", 0)
    assert "too few repeats" in benchkit.band([1.0, 2.0]).describe()


def test_live_cpu_counts_a_run_that_exits_in_the_window_once():
    """At an hour handover the old live run and its models exit: their whole life's CPU lands in the
    code server's reaped-children counter. Only what they spent inside the window may count."""
    sys.path.insert(0, str(BENCH))
    from bench.bench_live import cpu_by_kind

    server, run, model, new_run = (10, 1.0), (20, 2.0), (30, 3.0), (40, 4.0)
    before = {server: ("code server (grpc)", 5.0, 0.0, None), run: ("run", 100.0, 1.0, server),
              model: ("model", 50.0, 0.0, run)}
    # in the window: the run spent 2 s and the model 1 s more, then both exited (the run reaped the
    # model); a new run started and spent 3 s; the code server itself 0.5 s
    reaped = (100.0 + 2.0) + (1.0 + 50.0 + 1.0)
    after = {server: ("code server (grpc)", 5.5, reaped, None), new_run: ("run", 3.0, 0.0, server)}
    cpu = cpu_by_kind(before, after)
    assert abs(sum(cpu.values()) - (0.5 + 2.0 + 1.0 + 3.0)) < 1e-9, cpu
    assert abs(cpu["exited under code server (grpc)"] - 3.0) < 1e-9 and cpu["run"] == 3.0, cpu


def test_many_competitions_spec_passes_init_and_cycles_are_counted_in_the_window(tmp_path):
    """bench_many_competitions.py generates its competitions from a spec file over the baseline pack:
    every cycle length it offers must pass init's own validation (the feed cadence included), and
    the window's due cycles are the multiples of the cycle inside [began, ended)."""
    import json
    from datetime import datetime, timezone

    from bench.bench_many_competitions import due_cycles, spec_file
    from crunch_assets.scaffold.config import ScaffoldError, resolve

    path = tmp_path / "spec.json"
    for cycle_seconds in (10, 15, 30, 60):
        path.write_text(json.dumps(spec_file(cycle_seconds)))
        resolved = resolve("many_01", None, path)
        assert resolved.spec.scopes[0].prediction_interval_seconds == cycle_seconds
    stale = {**spec_file(30), "feed": {"kind": "candle", "granularity_seconds": 300}}  # 5-minute candles: unresolvable
    path.write_text(json.dumps(stale))
    with pytest.raises(ScaffoldError):
        resolve("many_01", None, path)
    began = datetime(2026, 12, 7, 23, 0, 5, tzinfo=timezone.utc)
    ended = datetime(2026, 12, 7, 23, 1, 30, tzinfo=timezone.utc)
    assert [at.strftime("%M:%S") for at in due_cycles(began, ended, 30)] == ["00:30", "01:00"]
    assert due_cycles(began.replace(second=0), ended, 30)[0] == began.replace(second=0)  # due at the start counts


def test_orchestrated_handover_fails_on_a_missed_cycle_or_a_failed_call_and_says_missed(capsys):
    """bench_orchestrator_runner.py --handover exits 1 when a cycle was not run or a call failed,
    and prints MISSED for a target not met (B not ready at the boundary, a slow cycle), whatever
    the figures look like otherwise."""
    from argparse import Namespace
    from datetime import datetime, timedelta, timezone

    from bench import benchkit
    from bench.bench_orchestrator_runner import summarize_handover

    boundary = datetime(2026, 12, 8, 1, 0, tzinfo=timezone.utc)
    args = Namespace(models=2, lead_seconds=10.0, cycle_seconds=2.0)

    def run(name: str, first_due: datetime, delays: list[float], ready_at: datetime, failed: int = 0) -> dict:
        cycles = [{"due": (first_due + timedelta(seconds=2 * k)).isoformat(), "delay_seconds": delay,
                   "late_start_seconds": 0.0, "answers": 2, "failed": failed if k == 0 else 0,
                   "problems": ["TIMEOUT: x"] if failed and k == 0 else []}
                  for k, delay in enumerate(delays)]
        return {"name": name, "cycles": cycles, "start_seconds": 0.5, "start_cpu_seconds": 0.4, "ready_at": ready_at.isoformat(),
                "connected_at_ready": 2, "announced": 2, "cycles_cpu_seconds": 1.0, "close_seconds": 0.1, "load_at_ready": "load"}

    def summarize(b: dict, a_delays: list[float] | None = None, expected: int = 20) -> tuple[int, str]:
        a = run("A", boundary - timedelta(seconds=20), a_delays or [0.2] * 10, boundary - timedelta(seconds=60))
        code = summarize_handover(args, a, b, boundary, boundary - timedelta(seconds=10), benchkit.LoadSampler(), expected,
                                  2, [], 1.0)
        return code, capsys.readouterr().out

    code, out = summarize(run("B", boundary, [0.2] * 10, boundary - timedelta(seconds=5)))
    assert code == 0 and "MISSED" not in out and out.count(": holds") == 3, out
    assert "the max of 20 cycles" in out  # 20 cycles are too few for a p99: it says so

    code, out = summarize(run("B", boundary, [0.2] * 9, boundary - timedelta(seconds=5)))  # one cycle not run
    assert code == 1 and "cycles run: 19 of 20" in out, out

    code, out = summarize(run("B", boundary, [0.2] * 10, boundary - timedelta(seconds=5), failed=1))
    assert code == 1 and "failed calls: 1" in out, out

    code, out = summarize(run("B", boundary, [1.5] + [0.2] * 9, boundary + timedelta(seconds=1)))  # B late, its first cycle slow
    assert code == 0, out  # every cycle ran and answered: the targets say what was missed
    assert "target: run B ready before the boundary: MISSED" in out
    assert "the handover delays no cycle" in out and out.count("MISSED") == 3, out
