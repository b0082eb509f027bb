"""Benchmark LocalModelRunner: start-up time and cycle wall time for N trivial models.

Each generated model sleeps MODEL_WORK_MS in predict, so per-model overhead is
(median cycle - MODEL_WORK_MS) / N. Target: 100 models per cycle within 3 s. Each model runs in its
sandbox (`--sandbox off` for the unsandboxed runner); the machine's load is printed with the
conditions and with every figure, since the figures move with it.

    .venv/bin/python bench/bench_local_runner.py          # N = 10, 100
    .venv/bin/python bench/bench_local_runner.py --full   # also N = 500
    .venv/bin/python bench/bench_local_runner.py --models 1000 --cycles 31
    .venv/bin/python bench/bench_local_runner.py --smoke  # N = 3, 3 cycles: checks that it runs

Cycle times are printed as a noise band (min / median / max over the cycles).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from bench import benchkit  # noqa: E402
from resources.model_runners.base import CallStatus, MethodCall, ModelInterface  # noqa: E402
from resources.model_runners.local import LocalModelRunner  # noqa: E402

MODEL_WORK_MS = 5.0
TARGET_MODELS = 100
TARGET_CYCLE_SECONDS = 3.0
CYCLE_TIMEOUT_SECONDS = 30.0

BASE_CLASS_SOURCE = '''
class BenchBase:
    def feed_update(self, data):
        self.last_close = data["candles_1m"][-1]["close"]

    def predict(self, subject, resolve_horizon_seconds, step_seconds):
        raise NotImplementedError
'''

MODEL_SOURCE = '''
import time

from bench_base import BenchBase


class TrivialModel(BenchBase):
    def predict(self, subject, resolve_horizon_seconds, step_seconds):
        time.sleep({work_seconds})
        return {{"value": self.last_close * 1.0001}}
'''

CALLS = [
    MethodCall(
        "feed_update",
        ({"symbol": "BTC", "asof_ts": 1_700_000_000, "candles_1m": [
            {"ts": 1_700_000_000 - 60 * i, "open": 1.0, "high": 1.0, "low": 1.0, "close": 100.0 + i, "volume": 1.0}
            for i in range(60)
        ]},),
    ),
    MethodCall("predict", ("BTC",), {"resolve_horizon_seconds": 3600, "step_seconds": 300}),
]


def write_models(root: Path, model_count: int) -> tuple[Path, Path]:
    lib_dir = root / "lib"
    models_dir = root / "models"
    lib_dir.mkdir()
    models_dir.mkdir()
    (lib_dir / "bench_base.py").write_text(BASE_CLASS_SOURCE)
    source = MODEL_SOURCE.format(work_seconds=MODEL_WORK_MS / 1000.0)
    for index in range(model_count):
        (models_dir / f"model_{index:04d}.py").write_text(source)
    return lib_dir, models_dir


def bench(model_count: int, cycles: int, sandbox: str = "on") -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_local_runner_") as tmp:
        lib_dir, models_dir = write_models(Path(tmp), model_count)
        runner = LocalModelRunner(
            models_dir=str(models_dir),
            extra_pythonpath=[str(lib_dir)],
            startup_timeout_seconds=60.0,
            sandbox=sandbox,
        )
        startup_started = time.perf_counter()
        with runner.open_session(ModelInterface("bench_base:BenchBase")) as session:
            startup_seconds = time.perf_counter() - startup_started
            cycle_seconds = []
            failures = 0
            for _ in range(cycles):
                cycle_started = time.perf_counter()
                results = session.run_cycle(CALLS, timeout_seconds=CYCLE_TIMEOUT_SECONDS)
                cycle_seconds.append(time.perf_counter() - cycle_started)
                failures += sum(1 for r in results.values() if r.status is not CallStatus.SUCCESS)
            close_started = time.perf_counter()
        close_seconds = time.perf_counter() - close_started
    median_cycle_seconds = statistics.median(cycle_seconds)
    return {
        "models": model_count,
        "startup_seconds": startup_seconds,
        "median_cycle_ms": median_cycle_seconds * 1000.0,
        "max_cycle_ms": max(cycle_seconds) * 1000.0,
        "cycle_band": benchkit.band([s * 1000.0 for s in cycle_seconds]),
        "overhead_per_model_ms": (median_cycle_seconds * 1000.0 - MODEL_WORK_MS) / model_count,
        "close_seconds": close_seconds,
        "failures": failures,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="also run 500 models")
    parser.add_argument("--cycles", type=int, default=7, help="cycles measured per model count")
    parser.add_argument("--models", help="model counts, comma-separated (default 10,100; --full adds 500)")
    parser.add_argument("--sandbox", choices=("on", "off"), default="on", help="LocalModelRunner.sandbox")
    benchkit.add_smoke_argument(parser)
    args = parser.parse_args()
    if args.smoke:
        args.models, args.cycles = "3", 3
    benchkit.smoke_banner(args)

    model_counts = ([int(m) for m in args.models.split(",")] if args.models
                    else [10, 100] + ([500] if args.full else []))
    benchkit.conditions(f"LocalModelRunner (sandbox {args.sandbox}), {', '.join(map(str, model_counts))} models")
    print(f"model work {MODEL_WORK_MS:g} ms per cycle; {args.cycles} cycles per model count")
    print(f"{'models':>6} {'startup s':>10} {'median cycle ms':>16} {'max cycle ms':>13} "
          f"{'overhead/model ms':>18} {'close s':>8} {'failures':>9}")
    target_met = True
    for model_count in model_counts:
        row = bench(model_count, args.cycles, args.sandbox)
        print(f"{row['models']:>6} {row['startup_seconds']:>10.2f} {row['median_cycle_ms']:>16.1f} "
              f"{row['max_cycle_ms']:>13.1f} {row['overhead_per_model_ms']:>18.3f} {row['close_seconds']:>8.2f} "
              f"{row['failures']:>9}")
        benchkit.figure(f"  {model_count} models, cycle: {row['cycle_band'].describe('ms', 1, 'cycles')}")
        target_met = target_met and row["failures"] == 0
        if model_count == TARGET_MODELS:
            target_met = target_met and row["median_cycle_ms"] / 1000.0 <= TARGET_CYCLE_SECONDS
    benchkit.figure("after the last model count")
    verdict = "holds" if target_met else "MISSED"
    print(f"target: every call answered, {TARGET_MODELS} models per cycle in <= {TARGET_CYCLE_SECONDS:g} s: {verdict}")
    return 0 if target_met else 1


if __name__ == "__main__":
    sys.exit(main())
