"""Cycle time of OrchestratorModelRunner with N model nodes answering in ~5 ms.

    .venv/bin/python bench/bench_orchestrator_runner.py           # N = 10, 100
    .venv/bin/python bench/bench_orchestrator_runner.py --full    # N = 10, 100, 500
    .venv/bin/python bench/bench_orchestrator_runner.py --models 1000 --cycles 31
    .venv/bin/python bench/bench_orchestrator_runner.py --smoke   # N = 3, 3 cycles: checks that it runs

Model nodes are real gRPC servers on loopback, hosted outside the measured process (as in
production, where each model is its own container): a few worker processes each run many asyncio
gRPC servers, one port and one model per server, rather than 500 processes of one threaded server
each, which a 2-core machine cannot hold. Each node answers like crunch-model-runner (one call at a
time, typed variants) after sleeping ~5 ms. The orchestrator WebSocket runs in this process.

One cycle = one predict-style call on every model through run_cycle. Reported: median, min and max
cycle wall time over several cycles (session start and a warm-up cycle excluded), the per-model
overhead (median minus the model's own delay, divided by N) and whether every model answered
SUCCESS within a 5 s cycle budget.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import grpc  # noqa: E402

from bench import benchkit  # noqa: E402

from model_runner_client.grpc.generated import dynamic_subclass_pb2_grpc  # noqa: E402
from resources.model_runners.base import CallStatus, MethodCall, ModelInterface  # noqa: E402
from resources.model_runners.orchestrator import OrchestratorModelRunner  # noqa: E402
from tests.fakes.model_orchestrator import (  # noqa: E402
    FAKE_MODEL_BASE_CLASS,
    LOOPBACK,
    AnsweringModel,
    FakeOrchestrator,
    HostedModel,
    announcement,
)

CYCLE_BUDGET_SECONDS = 5.0
PREDICT = MethodCall("predict", ("BTC",), {"horizon_seconds": 60, "step_seconds": 60})


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
            self.busy = False


async def _serve_models(model_count: int, answer_delay_seconds: float) -> None:
    servers, ports = [], []
    for _ in range(model_count):
        server = grpc.aio.server()
        servicer = _AsyncNodeServicer(HostedModel(AnsweringModel()), answer_delay_seconds)
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


def measure(model_count: int, cycle_count: int, worker_count: int, answer_delay_seconds: float) -> dict:
    workers = _NodeWorkers(model_count, worker_count, answer_delay_seconds)
    orchestrator = FakeOrchestrator(crunch_id="bench").start()
    try:
        orchestrator.announce(*(
            announcement(
                f"model-{index:03d}", LOOPBACK, port, deployment_id=f"deployment-{index}",
                model_name=f"model {index}", cruncher_id=f"cruncher-{index}", cruncher_name=f"Cruncher {index}",
            )
            for index, port in enumerate(workers.ports)
        ))
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also run N = 500")
    parser.add_argument("--cycles", type=int, default=7)
    parser.add_argument("--workers", type=int, default=max(2, os.cpu_count() or 2), help="node-hosting processes")
    parser.add_argument("--model-delay-ms", type=float, default=5.0)
    parser.add_argument("--models", help="model counts, comma-separated (default 10,100; --full adds 500)")
    parser.add_argument("--serve-models", type=int, help=argparse.SUPPRESS)  # worker mode
    benchkit.add_smoke_argument(parser)
    args = parser.parse_args()
    answer_delay_seconds = args.model_delay_ms / 1000

    if args.serve_models is not None:
        asyncio.run(_serve_models(args.serve_models, answer_delay_seconds))
        return 0

    if args.smoke:
        args.models, args.cycles, args.workers = "3", 3, 1
    benchkit.smoke_banner(args)
    model_counts = ([int(m) for m in args.models.split(",")] if args.models
                    else [10, 100] + ([500] if args.full else []))
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
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
