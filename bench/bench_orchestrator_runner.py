"""OrchestratorModelRunner with N model nodes answering in ~5 ms: the cycle time, and (--handover)
each cycle's due -> answered delay across an hour handover between two live runs (issue 25 item 5).

    .venv/bin/python bench/bench_orchestrator_runner.py           # cycle time at N = 10, 100
    .venv/bin/python bench/bench_orchestrator_runner.py --full    # N = 10, 100, 500
    .venv/bin/python bench/bench_orchestrator_runner.py --models 1000 --cycles 31
    .venv/bin/python bench/bench_orchestrator_runner.py --handover --models 1000   # 1,000 models, 120 cycles
    .venv/bin/python bench/bench_orchestrator_runner.py --smoke   # both, 3 models: checks that it runs

Model nodes are real gRPC servers on loopback, hosted outside the measured process (as in
production, where each model is its own container): a few worker processes each run many asyncio
gRPC servers, one port and one model per server, rather than 500 processes of one threaded server
each, which a 2-core machine cannot hold. Each node answers like crunch-model-runner (one call at a
time, typed variants) after sleeping ~5 ms. On this machine the nodes share the cores with the
coordinator: in production they are other hosts.

Cycle time (default): the orchestrator WebSocket runs in this process; one cycle = one
predict-style call on every model through run_cycle. Reported: median, min and max cycle wall time
over several cycles (session start and a warm-up cycle excluded), the per-model overhead (median
minus the model's own delay, divided by N) and whether every model answered SUCCESS within a 5 s
cycle budget.

The hour handover (--handover): the nodes and the orchestrator live for the whole bench (like the
orchestrator's containers, they outlive the hour's runs). Two "live runs", each its own process as
Dagster's live runs are: run A serves the hour that ends at the boundary; run B is launched
--lead-seconds before the boundary (the cycle sensor's cycle_lead_seconds) and opens its session at
once (crunch_assets/defs/live_window/window.py `prewarm_models`, the code the live run calls: the
orchestrator's WebSocket and a gRPC connection and Setup to every node) while A keeps serving, and
serves from the boundary on. Each run sleeps until each cycle's due time (resources/clock.py), runs
the cycle (a live competition's two calls: a 60-candle feed_update-style `tick`, then `predict`;
`--one-call`: the predict alone) and records due -> every answer in hand, the moment `run_cycles` stores the cycle. Reported: when B
is ready against the boundary and what its session start cost; A's cycles before B's launch and
while B opens its session; B's first cycles; the p99 over all cycles (below 100 cycles the "p99" is
the maximum, and says so); the load over the window. Exits 1 when a cycle was not run or a call
failed; a missed target is printed as MISSED.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import grpc  # noqa: E402

from bench import benchkit  # noqa: E402
from resources import clock  # noqa: E402

from model_runner_client.grpc.generated import dynamic_subclass_pb2_grpc  # noqa: E402
from resources.model_runners.base import CallStatus, MethodCall, ModelInterface  # noqa: E402
from resources.model_runners.orchestrator import OrchestratorModelRunner  # noqa: E402
from tests.fakes.model_orchestrator import (  # noqa: E402
    FAKE_MODEL_BASE_CLASS,
    LOOPBACK,
    FakeModelBase,
    FakeOrchestrator,
    HostedModel,
    announcement,
)

CYCLE_BUDGET_SECONDS = 5.0
PREDICT = MethodCall("predict", ("BTC",), {"horizon_seconds": 60, "step_seconds": 60})
# A live cycle's calls: the latest 60 one-minute candles, then the prediction.
LIVE_CALLS = [
    MethodCall("tick", ({"symbol": "BTC", "asof_ts": 1_700_000_000, "candles_1m": [
        {"ts": 1_700_000_000 - 60 * i, "open": 1.0, "high": 1.0, "low": 1.0, "close": 100.0 + i, "volume": 1.0}
        for i in range(60)
    ]},)),
    PREDICT,
]
TARGET_P99_SECONDS = 1.0


class _BenchModel(FakeModelBase):
    """Keeps only the last close it was sent (a node holding every tick of 1,000 models for two
    hours' runs would fill the machine)."""

    def __init__(self) -> None:
        self.last_close = None

    def tick(self, data) -> None:
        self.last_close = data["candles_1m"][-1]["close"]

    def predict(self, subject: str, horizon_seconds: int, step_seconds: int) -> dict:
        return {"value": 0.5, "subject": subject, "horizon_seconds": horizon_seconds, "last_close": self.last_close}


# --------------------------------------------------------------------------------------------------
# Worker process: many model nodes on one event loop
# --------------------------------------------------------------------------------------------------


class _AsyncNodeServicer(dynamic_subclass_pb2_grpc.DynamicSubclassServiceServicer):
    def __init__(self, hosted: HostedModel, answer_delay_seconds: float) -> None:
        self.hosted = hosted
        self.answer_delay_seconds = answer_delay_seconds
        self.busy = False

    async def Setup(self, request, context):
        return self.hosted.setup(request)

    async def Call(self, request, context):
        if self.busy:  # one call at a time, as the real node
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "Server busy")
        self.busy = True
        try:
            await asyncio.sleep(self.answer_delay_seconds)  # the model "thinking"
            return self.hosted.call(request)
        finally:
            self.hosted.received_calls.clear()  # the tests' record of calls: not kept here
            self.busy = False


async def _serve_models(model_count: int, answer_delay_seconds: float) -> None:
    servers, ports = [], []
    for _ in range(model_count):
        server = grpc.aio.server()
        servicer = _AsyncNodeServicer(HostedModel(_BenchModel()), answer_delay_seconds)
        dynamic_subclass_pb2_grpc.add_DynamicSubclassServiceServicer_to_server(servicer, server)
        ports.append(server.add_insecure_port(f"{LOOPBACK}:0"))
        await server.start()
        servers.append(server)
    print(json.dumps(ports), flush=True)
    # Serve until the parent closes our stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await asyncio.gather(*(server.stop(None) for server in servers))


class _NodeWorkers:
    """Worker processes hosting `model_count` nodes between them."""

    def __init__(self, model_count: int, worker_count: int, answer_delay_seconds: float) -> None:
        shares = [model_count // worker_count + (1 if index < model_count % worker_count else 0) for index in range(worker_count)]
        self.processes = [
            subprocess.Popen(
                [sys.executable, __file__, "--serve-models", str(share), "--model-delay-ms", str(answer_delay_seconds * 1000)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
            )
            for share in shares if share
        ]
        self.ports = [port for process in self.processes for port in json.loads(process.stdout.readline())]

    def cpu_seconds(self) -> float:
        """User + system CPU the node-hosting processes have used so far."""
        import psutil

        total = 0.0
        for process in self.processes:
            try:
                times = psutil.Process(process.pid).cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total

    def stop(self) -> None:
        for process in self.processes:
            process.stdin.close()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


# --------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------


def announce_all(orchestrator: FakeOrchestrator, ports: list[int]) -> None:
    orchestrator.announce(*(
        announcement(
            f"model-{index:04d}", LOOPBACK, port, deployment_id=f"deployment-{index}",
            model_name=f"model {index}", cruncher_id=f"cruncher-{index}", cruncher_name=f"Cruncher {index}",
        )
        for index, port in enumerate(ports)
    ))


def measure(model_count: int, cycle_count: int, worker_count: int, answer_delay_seconds: float) -> dict:
    workers = _NodeWorkers(model_count, worker_count, answer_delay_seconds)
    orchestrator = FakeOrchestrator(crunch_id="bench").start()
    try:
        announce_all(orchestrator, workers.ports)
        runner = OrchestratorModelRunner(
            host=LOOPBACK, port=orchestrator.port, crunch_id=orchestrator.crunch_id,
            call_timeout_seconds=CYCLE_BUDGET_SECONDS, connect_timeout_seconds=60,
        )
        session_start = time.perf_counter()
        with runner.open_session(ModelInterface(FAKE_MODEL_BASE_CLASS)) as session:
            session_start_seconds = time.perf_counter() - session_start
            session.run_cycle([PREDICT], CYCLE_BUDGET_SECONDS)  # warm-up: first calls open HTTP/2 streams
            cycle_seconds, successes, exec_times_ms = [], [], []
            for _ in range(cycle_count):
                started = time.perf_counter()
                results = session.run_cycle([PREDICT], CYCLE_BUDGET_SECONDS)
                cycle_seconds.append(time.perf_counter() - started)
                successes.append(sum(result.status is CallStatus.SUCCESS for result in results.values()))
                exec_times_ms.extend(result.exec_time_ms for result in results.values())
    finally:
        orchestrator.stop()
        workers.stop()

    median_seconds = statistics.median(cycle_seconds)
    return {
        "models": model_count,
        "session_start_s": session_start_seconds,
        "median_cycle_ms": median_seconds * 1000,
        "min_cycle_ms": min(cycle_seconds) * 1000,
        "max_cycle_ms": max(cycle_seconds) * 1000,
        "cycle_band": benchkit.band([s * 1000 for s in cycle_seconds]),
        "per_model_overhead_ms": max(median_seconds - answer_delay_seconds, 0) * 1000 / model_count,
        "median_call_ms": statistics.median(exec_times_ms),
        "all_succeeded": all(count == model_count for count in successes),
        "within_budget": max(cycle_seconds) < CYCLE_BUDGET_SECONDS,
    }


# --------------------------------------------------------------------------------------------------
# The hour handover: two live-run processes over the same long-lived nodes
# --------------------------------------------------------------------------------------------------


def serve_run(args) -> int:
    """One live run: open the session now (as the live run does before its window), then serve
    every cycle due in [window_start, window_end)."""
    from crunch_assets.defs.live_window.window import prewarm_models
    from crunch_assets.defs.predictions.assets import SessionOnDemand

    window_start = datetime.fromisoformat(args.window_start)
    window_end = datetime.fromisoformat(args.window_end)
    calls = [PREDICT] if args.one_call else LIVE_CALLS
    runner = OrchestratorModelRunner(
        host=LOOPBACK, port=args.orchestrator_port, crunch_id=args.crunch_id,
        call_timeout_seconds=CYCLE_BUDGET_SECONDS, connect_timeout_seconds=args.lead_seconds,
    )
    report: dict = {"name": args.name, "cycles": [], "launched_at": clock.now().isoformat()}
    cpu_before = time.process_time()
    report["process_start_cpu_seconds"] = cpu_before  # the interpreter and the imports, before the session
    with ExitStack() as stack:
        on_demand = SessionOnDemand(runner, benchkit.InterfaceRules(FAKE_MODEL_BASE_CLASS), stack)
        report["start_seconds"] = prewarm_models(on_demand, window_start, args.lead_seconds, benchkit.RunLog(args.name))
        report["ready_at"] = clock.now().isoformat()
        report["start_cpu_seconds"] = time.process_time() - cpu_before
        report["load_at_ready"] = benchkit.load_text()
        session = on_demand.get()
        report["connected_at_ready"] = len(session.connected_model_ids())
        report["announced"] = len(session.models())
        due = window_start
        cpu_before = time.process_time()
        while due < window_end:
            wait = (due - clock.now()).total_seconds()
            if wait > 0:
                clock.sleep(wait)
            began = clock.now()
            results = session.run_cycle(calls, timeout_seconds=CYCLE_BUDGET_SECONDS)
            answered = clock.now()
            problems = sorted({f"{r.status.value}: {r.detail}" for r in results.values() if r.status is not CallStatus.SUCCESS})
            report["cycles"].append({
                "due": due.isoformat(), "delay_seconds": (answered - due).total_seconds(),
                "late_start_seconds": (began - due).total_seconds(), "answers": len(results),
                "failed": sum(1 for r in results.values() if r.status is not CallStatus.SUCCESS), "problems": problems[:3],
            })
            due += timedelta(seconds=args.cycle_seconds)
        report["cycles_cpu_seconds"] = time.process_time() - cpu_before
        closing = time.perf_counter()
    report["close_seconds"] = time.perf_counter() - closing
    Path(args.out).write_text(json.dumps(report))
    return 0


def launch_run(args, name: str, orchestrator: FakeOrchestrator, start: datetime, end: datetime, out: Path) -> subprocess.Popen:
    return subprocess.Popen([
        sys.executable, __file__, "--serve-run", "--name", name, "--orchestrator-port", str(orchestrator.port),
        "--crunch-id", orchestrator.crunch_id, "--window-start", start.isoformat(), "--window-end", end.isoformat(),
        "--cycle-seconds", str(args.cycle_seconds), "--lead-seconds", str(args.lead_seconds), "--out", str(out),
        *(["--one-call"] if args.one_call else []),
    ], cwd=REPO_ROOT)


def handover(args, answer_delay_seconds: float) -> int:
    expected = args.cycles_before + args.cycles_after
    benchkit.conditions(
        f"{args.models} orchestrated models (loopback gRPC nodes in {args.workers} worker processes), two live runs "
        f"handing over, lead {args.lead_seconds:g} s, a cycle every {args.cycle_seconds:g} s, "
        f"{args.cycles_before} + {args.cycles_after} cycles of "
        f"{'one predict call' if args.one_call else 'two calls (tick, predict)'} per model, model delay {args.model_delay_ms:g} ms")
    nodes_started = time.perf_counter()
    workers = _NodeWorkers(args.models, args.workers, answer_delay_seconds)
    orchestrator = FakeOrchestrator(crunch_id="bench").start()
    try:
        announce_all(orchestrator, workers.ports)
        benchkit.figure(f"{args.models} nodes up in {time.perf_counter() - nodes_started:.1f} s (not part of any run: "
                        f"they outlive the hour's runs)")
        with tempfile.TemporaryDirectory(prefix="bench_orchestrator_handover_") as tmp:
            now = clock.now()
            # run A gets the same lead before its first cycle as B gets before the boundary
            first_due = (now + timedelta(seconds=args.lead_seconds)).replace(microsecond=0)
            boundary = first_due + timedelta(seconds=args.cycle_seconds * args.cycles_before)
            end = boundary + timedelta(seconds=args.cycle_seconds * args.cycles_after)
            launch_b_at = boundary - timedelta(seconds=args.lead_seconds)
            out_a, out_b = Path(tmp) / "a.json", Path(tmp) / "b.json"
            nodes_cpu = -workers.cpu_seconds()
            with benchkit.LoadSampler(every_seconds=5.0) as load:
                run_a = launch_run(args, "A", orchestrator, first_due, boundary, out_a)
                clock.sleep(max(0.0, (launch_b_at - clock.now()).total_seconds()))
                run_b = launch_run(args, "B", orchestrator, boundary, end, out_b)
                codes = run_a.wait(), run_b.wait()
            nodes_cpu += workers.cpu_seconds()
            if codes != (0, 0):
                print(f"a run failed: exit codes {codes}")
                return 1
            a, b = (json.loads(out.read_text()) for out in (out_a, out_b))
        sessions = orchestrator.connections_served
        reports = orchestrator.failure_reports
    finally:
        orchestrator.stop()
        workers.stop()
    return summarize_handover(args, a, b, boundary, launch_b_at, load, expected, sessions, reports, nodes_cpu)


def summarize_handover(args, a: dict, b: dict, boundary: datetime, launch_b_at: datetime, load: benchkit.LoadSampler,
                       expected: int, sessions: int, failure_reports: list, nodes_cpu_seconds: float) -> int:
    for run in (a, b):
        start = run["start_seconds"]
        benchkit.figure(
            f"run {run['name']}: session opened in {'(failed)' if start is None else f'{start:.2f} s'} "
            f"({run['start_cpu_seconds']:.2f} CPU-s, after {run.get('process_start_cpu_seconds', 0):.2f} CPU-s of the process's "
            f"own start; {run['connected_at_ready']} of {run['announced']} models connected), "
            f"ready {run['ready_at']}; its cycles took {run['cycles_cpu_seconds']:.1f} CPU-s, its close "
            f"{run['close_seconds']:.2f} s (at its start: {run['load_at_ready']})")
    ready_b = datetime.fromisoformat(b["ready_at"])
    print(f"boundary {boundary.isoformat()}; run B launched {launch_b_at.isoformat()} ({args.lead_seconds:g} s before), "
          f"ready {(boundary - ready_b).total_seconds():.1f} s before the boundary")
    print("cycles around the boundary (run, due, due -> answered, failed calls):")
    for run in (a, b):
        for cycle in run["cycles"]:
            if abs((datetime.fromisoformat(cycle["due"]) - boundary).total_seconds()) <= args.lead_seconds + 2 * args.cycle_seconds:
                print(f"  {run['name']} {cycle['due']} {cycle['delay_seconds']:.3f} s {cycle['failed']}"
                      + (f"  {cycle['problems']}" if cycle["problems"] else ""))
    delays = [c["delay_seconds"] for run in (a, b) for c in run["cycles"]]

    def a_cycles(since: datetime, until: datetime) -> list[float]:
        # a cycle is affected by what runs while it runs: from its due time to its answer
        return [c["delay_seconds"] for c in a["cycles"]
                if datetime.fromisoformat(c["due"]) + timedelta(seconds=c["delay_seconds"]) >= since
                and datetime.fromisoformat(c["due"]) < until]

    before_lead = a_cycles(datetime.min.replace(tzinfo=boundary.tzinfo), launch_b_at)
    during_lead = a_cycles(launch_b_at, boundary)
    while_b_opens = a_cycles(launch_b_at, ready_b)
    after = [c["delay_seconds"] for c in b["cycles"]]
    benchkit.figure(f"due -> answered, all {len(delays)} cycles: {benchkit.tail_text(delays)}")
    benchkit.figure(f"  run A before B's launch: {benchkit.tail_text(before_lead)}")
    benchkit.figure(f"  run A from B's launch to the boundary: {benchkit.tail_text(during_lead)}; of which while B "
                    f"started and opened its session: {', '.join(f'{d:.3f} s' for d in while_b_opens) or 'none'}")
    benchkit.figure(f"  run B after the boundary: {benchkit.tail_text(after)}; its first cycles: "
                    f"{', '.join(f'{d:.3f} s' for d in after[:5])}")
    late_starts = [c["late_start_seconds"] for run in (a, b) for c in run["cycles"] if c["late_start_seconds"] > 0.05]
    print(f"cycles that started > 50 ms after their due time (the one before still running): {len(late_starts)}")
    cycle_count = max(1, len(delays))
    print(f"CPU per cycle: the live run {(a['cycles_cpu_seconds'] + b['cycles_cpu_seconds']) / cycle_count:.2f} CPU-s "
          f"(its event loop and gRPC's threads), the {args.models} nodes {nodes_cpu_seconds / cycle_count:.2f} CPU-s "
          f"(their sessions' start included): on {os.cpu_count()} cores, which the nodes share here")
    print(load.text())
    failed = sum(c["failed"] for run in (a, b) for c in run["cycles"])
    print(f"cycles run: {len(delays)} of {expected}; failed calls: {failed}; orchestrator sessions served: {sessions}; "
          f"failure reports: {len(failure_reports)}")
    typical = benchkit.percentile(before_lead, 0.9) if before_lead else float("inf")
    first_after = after[:3]
    verdicts = [
        ("run B ready before the boundary", ready_b <= boundary and b["connected_at_ready"] == args.models),
        ("the handover delays no cycle (B's first 3 cycles and A's while B starts no later than A's p90 before + 0.5 s)",
         bool(first_after) and bool(during_lead) and max(first_after + during_lead) <= typical + 0.5),
        benchkit.p99_verdict(delays, TARGET_P99_SECONDS),
    ]
    benchkit.print_verdicts(verdicts)
    benchkit.figure("after the runs")
    return 0 if failed == 0 and len(delays) == expected and not failure_reports else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also run N = 500")
    parser.add_argument("--cycles", type=int, default=7)
    parser.add_argument("--workers", type=int, default=max(2, os.cpu_count() or 2), help="node-hosting processes")
    parser.add_argument("--model-delay-ms", type=float, default=5.0)
    parser.add_argument("--models", help="model counts, comma-separated (default 10,100; --full adds 500)")
    parser.add_argument("--handover", action="store_true",
                        help="two live runs handing over at an hour boundary, at --models (one count; default 1000)")
    parser.add_argument("--lead-seconds", type=float, default=30.0,
                        help="--handover: run B is launched this long before the boundary (the spec's cycle_lead_seconds)")
    parser.add_argument("--cycle-seconds", type=float, default=3.0, help="--handover: a cycle every this many seconds")
    parser.add_argument("--cycles-before", type=int, default=60, help="--handover: cycles run A serves (the lead among them)")
    parser.add_argument("--cycles-after", type=int, default=60, help="--handover: cycles run B serves after the boundary")
    parser.add_argument("--one-call", action="store_true",
                        help="--handover: one predict call per model and cycle instead of the live tick + predict")
    parser.add_argument("--serve-models", type=int, help=argparse.SUPPRESS)  # worker mode
    parser.add_argument("--serve-run", action="store_true", help=argparse.SUPPRESS)  # live-run mode
    for hidden in ("--name", "--crunch-id", "--window-start", "--window-end", "--out"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--orchestrator-port", type=int, help=argparse.SUPPRESS)
    benchkit.add_smoke_argument(parser)
    args = parser.parse_args()
    answer_delay_seconds = args.model_delay_ms / 1000

    if args.serve_models is not None:
        asyncio.run(_serve_models(args.serve_models, answer_delay_seconds))
        return 0
    if args.serve_run:
        return serve_run(args)

    benchkit.smoke_banner(args)
    if args.smoke:  # both measurements, the handover after the cycle-time table
        args.cycles, args.workers = 3, 1
        args.lead_seconds, args.cycle_seconds, args.cycles_before, args.cycles_after = 4.0, 1.0, 6, 3
        table_failed = not args.handover and cycle_time_table(args, ["3"], answer_delay_seconds)
        args.models = 3
        return 1 if handover(args, answer_delay_seconds) or table_failed else 0
    if args.handover:
        if args.models and not args.models.isdigit():
            parser.error(f"--handover takes one model count, not {args.models!r}")
        args.models = int(args.models or 1000)
        return handover(args, answer_delay_seconds)
    return 1 if cycle_time_table(args, args.models.split(",") if args.models else None, answer_delay_seconds) else 0


def cycle_time_table(args, models: list[str] | None, answer_delay_seconds: float) -> bool:
    """The cycle time at each N; True if a cycle failed or overran its budget."""
    model_counts = [int(m) for m in models] if models else [10, 100] + ([500] if args.full else [])
    benchkit.conditions("OrchestratorModelRunner against loopback gRPC model nodes")
    failed = False
    print(f"OrchestratorModelRunner: one predict call per model per cycle, model delay {args.model_delay_ms:g} ms, "
          f"{args.cycles} measured cycles, nodes in {args.workers} worker processes, {os.cpu_count()} CPUs")
    print(
        f"{'N':>5} {'start s':>8} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'overhead/model ms':>18} "
        f"{'call ms':>8}  all SUCCESS < {CYCLE_BUDGET_SECONDS:g}s"
    )
    for model_count in model_counts:
        row = measure(model_count, args.cycles, args.workers, answer_delay_seconds)
        print(
            f"{row['models']:>5} {row['session_start_s']:>8.2f} {row['median_cycle_ms']:>10.1f} {row['min_cycle_ms']:>8.1f} "
            f"{row['max_cycle_ms']:>8.1f} {row['per_model_overhead_ms']:>18.3f} {row['median_call_ms']:>8.1f}  "
            f"{'yes' if row['all_succeeded'] and row['within_budget'] else 'NO'}",
            flush=True,
        )
        benchkit.figure(f"  {row['models']} models, cycle: {row['cycle_band'].describe('ms', 1, 'cycles')}")
        failed = failed or not (row["all_succeeded"] and row["within_budget"])
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
