"""Replay throughput: N days of real BTC/USD candles through the whole asset chain (the path a
backfill takes), three quickstarter models in their own processes, fresh embedded PostgreSQL.

    .venv/bin/python bench/bench_replay.py [--days 2]
"""

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
CSV = PROJECT_ROOT.parent / "shared" / "data" / "btcusd_bitstamp_1min_2025-01-07_2025-02-02.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=2)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="crunch-bench-"))
    data_dir.chmod(0o755)
    os.environ.pop("CRUNCH_DATABASE_URL", None)
    os.environ["CRUNCH_DATA_DIR"] = str(data_dir)
    import logging

    logging.getLogger("dagster").setLevel(logging.WARNING)
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from crunch_assets.replay import replay
    from resources.feeds.csv_replay import CsvReplayFeed

    start = datetime(2025, 1, 7, 1, tzinfo=timezone.utc)
    spec = replace(SPEC, start=start, checkpoint_interval_seconds=86400)
    defs = build_definitions(spec=spec, feed=CsvReplayFeed(path=str(CSV)), automation_running=False)
    began = time.perf_counter()
    timings = replay(defs, spec, start, start + timedelta(days=args.days))
    total = time.perf_counter() - began
    cycles = args.days * 1440
    print(f"replayed {args.days} day(s) = {cycles} cycles x 3 models in {total:.1f} s "
          f"({cycles / total:.0f} cycles/s, {3 * cycles / total:.0f} predictions/s end to end)")
    for step, seconds in timings.seconds_by_step.items():
        print(f"  {step:<24} {seconds:6.1f} s")


if __name__ == "__main__":
    main()
