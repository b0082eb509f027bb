"""1,000 local models in one competition (issue 25 item 5): memory per model, start time, and each
cycle's due -> answered delay across an hour handover.

Two "live runs", each its own process as Dagster's live runs are, each with its own
LocalModelRunner session over the same N sandboxed models: run A serves the hour that ends at the
boundary; run B is launched --lead-seconds before the boundary (the cycle sensor's
cycle_lead_seconds), starts its models at once (crunch_assets/defs/live_window/window.py `prewarm_models`, the code the
live run calls) while A keeps serving, and serves from the boundary on. Each run sleeps until each
cycle's due time, runs the cycle (the same two calls as bench_local_runner.py: a 60-candle
feed_update and a predict) and records due -> every answer in hand, the moment `run_cycles` stores
the cycle (the store's own write is bench_live.py's figure: it runs the whole deployment, at
fewer models). Memory: PSS of every process of each model (the sandbox's PID 1 supervisor, the
worker; with --one-bwrap-each also bwrap's monitor outside) and of the session's fork server (its
bwrap and itself, counted once) from /proc/<pid>/smaps_rollup, after the run's last cycle: PSS
divides each shared page among the processes sharing it, so the sum is what the models cost.

    .venv/bin/python bench/bench_model_scale.py --models 1000 --lead-seconds 60 --cycle-seconds 5 --cycles-before 60 --cycles-after 60
    .venv/bin/python bench/bench_model_scale.py --smoke   # 3 models, a few cycles: checks that it runs

Targets: PSS per model <= 5 MiB; run B ready before the boundary and no cycle after it later than
the ones before; due -> answered p99 <= 1 s (below 100 cycles the "p99" is the maximum, and says
so). Exits 1 when a cycle was not run or a call failed; a missed target is printed as MISSED.
Refuses to start when the machine's available memory cannot hold both runs' models at the
handover (the two sessions overlap for the lead).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from bench import benchkit  # noqa: E402
from bench.bench_local_runner import CALLS, write_models  # noqa: E402
from resources import clock  # noqa: E402

TARGET_PSS_MIB = 5.0
TARGET_P99_SECONDS = 1.0
CALL_TIMEOUT_SECONDS = 30.0
# What one model was measured to cost before the sessions are up, to refuse a run the machine
# cannot hold (both runs' models live during the lead).
ASSUMED_MIB_PER_MODEL = 6.0
ASSUMED_MIB_PER_MODEL_ONE_BWRAP_EACH = 11.0


def session_memory(session) -> dict:
    """PSS of every process of every model of a LocalModelSession: each sandbox's processes (its
    PID namespace: supervisor, worker, anything the model started) and bwrap's monitor outside.
    One pass over /proc (per-model lookups read all of /proc once per model: minutes at 1,000)."""
    by_namespace: dict[str, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                by_namespace.setdefault(os.readlink(f"/proc/{name}/ns/pid"), []).append(int(name))
            except OSError:
                pass
    total_kib, processes, models = 0, 0, 0
    for handle in session._handles.values():  # the bench reads the runner's own handles
        init = handle.init_pid() if handle.process is not None else None
        if init is None:
            continue
        try:
            pids = set(by_namespace.get(os.readlink(f"/proc/{init}/ns/pid"), ())) | {handle.process.pid}
        except OSError:
            continue
        models += 1
        processes += len(pids)
        total_kib += sum(benchkit.pss_kib(pid) for pid in pids)
    # The fork server (its bwrap monitor and itself, PID 1 of the namespace above the models'),
    # shared by all models: counted once, in the total.
    fork_server = session._fork_server._process if session._fork_server is not None else None
    if fork_server is not None and fork_server.poll() is None:
        for pid in [fork_server.pid, *children_of(fork_server.pid)]:
            total_kib += benchkit.pss_kib(pid)
            processes += 1
    models = max(1, models)
    return {"pss_mib_per_model": total_kib / 1024 / models, "processes_per_model": processes / models,
            "pss_gib_total": total_kib / 1024 / 1024, "fork_server": fork_server is not None}


def children_of(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                found += [int(child) for child in children.read().split()]
    except OSError:
        pass
    return found


def serve(args) -> int:
    """One live run: start the models now, then serve every cycle due in [window_start, window_end)."""
    from crunch_assets.defs.live_window.window import prewarm_models
    from crunch_assets.defs.predictions.assets import SessionOnDemand
    from resources.model_runners.base import CallStatus
    from resources.model_runners.local import LocalModelRunner

    window_start = datetime.fromisoformat(args.window_start)
    window_end = datetime.fromisoformat(args.window_end)
    runner = LocalModelRunner(models_dir=args.models_dir, extra_pythonpath=[args.lib_dir], startup_timeout_seconds=120.0,
                              max_models_starting_at_once=args.starting_at_once, fork_server=not args.one_bwrap_each)
    report: dict = {"name": args.name, "cycles": []}
    with ExitStack() as stack:
        on_demand = SessionOnDemand(runner, benchkit.InterfaceRules("bench_base:BenchBase"), stack)
        report["start_seconds"] = prewarm_models(on_demand, window_start, args.lead_seconds, benchkit.RunLog(args.name))
        report["ready_at"] = clock.now().isoformat()
        session = on_demand.get()
        report["load_at_ready"] = benchkit.load_text()
        due = window_start
        while due < window_end:
            wait = (due - clock.now()).total_seconds()
            if wait > 0:
                clock.sleep(wait)
            results = session.run_cycle(CALLS, timeout_seconds=CALL_TIMEOUT_SECONDS)
            answered = clock.now()
            failed = sum(1 for r in results.values() if r.status is not CallStatus.SUCCESS)
            report["cycles"].append({"due": due.isoformat(), "delay_seconds": (answered - due).total_seconds(),
                                     "failed": failed, "answers": len(results)})
            due += timedelta(seconds=args.cycle_seconds)
        report["restarts"] = sum(session.restart_counts().values())
        report["memory"] = session_memory(session)  # after the cycles: what a model holds once it has run
    Path(args.out).write_text(json.dumps(report))
    return 0


def launch(args, name: str, models_dir: Path, lib_dir: Path, start: datetime, end: datetime, out: Path) -> subprocess.Popen:
    return subprocess.Popen([
        sys.executable, __file__, "--serve", "--name", name, "--models-dir", str(models_dir), "--lib-dir", str(lib_dir),
        "--window-start", start.isoformat(), "--window-end", end.isoformat(), "--cycle-seconds", str(args.cycle_seconds),
        "--lead-seconds", str(args.lead_seconds), "--starting-at-once", str(args.starting_at_once), "--out", str(out),
        *(["--one-bwrap-each"] if args.one_bwrap_each else []),
    ])


def available_mib() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--lead-seconds", type=float, default=30.0,
                        help="run B is launched this long before the boundary (the spec's cycle_lead_seconds)")
    parser.add_argument("--cycle-seconds", type=float, default=5.0)
    parser.add_argument("--cycles-before", type=int, default=12, help="cycles run A serves (the lead falls among them)")
    parser.add_argument("--cycles-after", type=int, default=12, help="cycles run B serves after the boundary")
    parser.add_argument("--single", action="store_true",
                        help="run A alone, no handover (memory, start and cycles of one run: half the memory)")
    parser.add_argument("--starting-at-once", type=int, default=0, help="max_models_starting_at_once (0: 2 x CPUs)")
    parser.add_argument("--one-bwrap-each", action="store_true",
                        help="LocalModelRunner(fork_server=False): a bwrap and an interpreter per model, as before the fork server")
    benchkit.add_smoke_argument(parser)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--name", "--models-dir", "--lib-dir", "--window-start", "--window-end", "--out"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args)
    if args.smoke:
        args.models, args.lead_seconds, args.cycle_seconds, args.cycles_before, args.cycles_after = 3, 6.0, 2.0, 5, 3
    benchkit.smoke_banner(args)
    runs = "one live run (--single)" if args.single else f"two live runs handing over, lead {args.lead_seconds:g} s"
    benchkit.conditions(f"{args.models} local models (sandbox on), {runs}, a cycle every {args.cycle_seconds:g} s, "
                        f"{args.cycles_before}{'' if args.single else f' + {args.cycles_after}'} cycles")
    need_mib = (1 if args.single else 2) * args.models * (ASSUMED_MIB_PER_MODEL_ONE_BWRAP_EACH if args.one_bwrap_each else ASSUMED_MIB_PER_MODEL)
    if available_mib() < 1.2 * need_mib:
        print(f"refused: both runs' models need ~{need_mib / 1024:.1f} GiB at the handover, "
              f"{available_mib() / 1024:.1f} GiB available; fewer --models")
        return 2

    with tempfile.TemporaryDirectory(prefix="bench_model_scale_") as tmp:
        lib_dir, models_dir = write_models(Path(tmp), args.models)
        now = clock.now()
        # run A gets the same lead before its first cycle as B gets before the boundary, plus its start
        first_due = (now + timedelta(seconds=args.lead_seconds)).replace(microsecond=0)
        boundary = first_due + timedelta(seconds=args.cycle_seconds * args.cycles_before)
        if args.single:
            args.cycles_after = 0
        end = boundary + timedelta(seconds=args.cycle_seconds * args.cycles_after)
        out_a, out_b = Path(tmp) / "a.json", Path(tmp) / "b.json"
        with benchkit.LoadSampler(every_seconds=5.0) as load:
            run_a = launch(args, "A", models_dir, lib_dir, first_due, boundary, out_a)
            launch_b_at = boundary - timedelta(seconds=args.lead_seconds)
            clock.sleep(max(0.0, (launch_b_at - clock.now()).total_seconds()))
            run_b = None if args.single else launch(args, "B", models_dir, lib_dir, boundary, end, out_b)
            codes = run_a.wait(), (0 if run_b is None else run_b.wait())
        if codes != (0, 0):
            print(f"a run failed: exit codes {codes}")
            return 1
        reports = [json.loads(out.read_text()) for out in ((out_a,) if args.single else (out_a, out_b))]
    return summarize(args, reports, boundary, launch_b_at, load.samples)


def summarize(args, reports: list[dict], boundary: datetime, launch_b_at: datetime, load_samples: list[float]) -> int:
    a, b = reports[0], reports[-1]
    for run in reports:
        memory = run["memory"]
        start = run["start_seconds"]
        benchkit.figure(f"run {run['name']}: {args.models} models started in "
                        f"{'(failed)' if start is None else f'{start:.1f} s'}, ready {run['ready_at']}; "
                        f"PSS {memory['pss_mib_per_model']:.2f} MiB per model ({memory['processes_per_model']:.1f} processes "
                        f"each), {memory['pss_gib_total']:.2f} GiB in all (at its start: {run['load_at_ready']})")
    single = len(reports) == 1
    if not single:
        print(f"boundary {boundary.isoformat()}; run B launched {launch_b_at.isoformat()} ({args.lead_seconds:g} s before)")
    around = [(run["name"], cycle) for run in reports for cycle in run["cycles"]
              if abs((datetime.fromisoformat(cycle["due"]) - boundary).total_seconds()) <= args.lead_seconds + 2 * args.cycle_seconds]
    print("cycles" + ("" if single else " around the boundary") + " (run, due, due -> answered, failed calls):")
    for name, cycle in around:
        print(f"  {name} {cycle['due']} {cycle['delay_seconds']:.3f} s {cycle['failed']}")
    delays = [c["delay_seconds"] for run in reports for c in run["cycles"]]
    during_lead = [c["delay_seconds"] for c in a["cycles"] if datetime.fromisoformat(c["due"]) >= launch_b_at]
    before_lead = [c["delay_seconds"] for c in a["cycles"] if datetime.fromisoformat(c["due"]) < launch_b_at]
    after = [c["delay_seconds"] for c in b["cycles"]] if len(reports) == 2 else []
    benchkit.figure(f"due -> answered, all {len(delays)} cycles: {benchkit.tail_text(delays)}")
    if not single:
        benchkit.figure(f"  run A before B's launch: {benchkit.tail_text(before_lead)}; while B starts its models: "
                        f"{benchkit.tail_text(during_lead)}; run B after the boundary: {benchkit.tail_text(after)}")
    print(f"1-min load over the window: {benchkit.band(load_samples).describe('', 1, 'samples')}")
    failed = sum(c["failed"] for run in reports for c in run["cycles"])
    expected = args.cycles_before + args.cycles_after
    print(f"cycles run: {len(delays)} of {expected}; failed calls: {failed}; restarts: "
          f"{' + '.join(str(run['restarts']) for run in reports)}")
    ready_b = datetime.fromisoformat(b["ready_at"])
    pss = max(run["memory"]["pss_mib_per_model"] for run in reports)
    verdicts = [("PSS per model <= 5 MiB", pss <= TARGET_PSS_MIB)]
    if len(reports) == 2:
        verdicts += [
            ("run B ready before the boundary", ready_b <= boundary),
            ("the handover delays no cycle (B's first cycle no later than A's p90 + 0.5 s)",
             bool(after) and bool(before_lead) and after[0] <= benchkit.percentile(before_lead, 0.9) + 0.5),
        ]
    verdicts.append(benchkit.p99_verdict(delays, TARGET_P99_SECONDS))
    benchkit.print_verdicts(verdicts)
    benchkit.figure("after the runs")
    return 0 if failed == 0 and len(delays) == expected else 1


if __name__ == "__main__":
    sys.exit(main())
