"""Report API reads with 1 week vs 4 weeks of history stored: a read must not grow with history.

The synthetic feed and the quickstarter models are replayed through the whole chain (daily
checkpoints) for one week into a fresh embedded PostgreSQL; that database is copied and three more
weeks are replayed into the copy. The API is then served by uvicorn on loopback over each database
and every hot read is timed over real HTTP; the medians and the 4-week / 1-week ratio are printed
(target <= 1.2).

    .venv/bin/python bench/bench_report_api.py [--requests 60]
"""

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
START = datetime(2026, 1, 5, tzinfo=timezone.utc)  # a Monday
WEEK = timedelta(days=7)


def reads(lag: dict) -> dict[str, tuple[str, dict]]:
    last = datetime.fromisoformat(lag["last_scored_cycle"]["at"])
    return {
        "leaderboard": ("/reports/leaderboard", {}),
        "leaderboard as of a day ago": ("/reports/leaderboard", {"as_of": (last - timedelta(days=1)).isoformat()}),
        "leaderboard by window": ("/reports/leaderboard", {"window": "score_steady"}),
        "predictions, newest page": ("/reports/predictions", {"order": "desc", "limit": 100}),
        "predictions of a model, last hour": ("/reports/predictions", {
            "model_id": "mean_reversion", "start": (last - timedelta(hours=1)).isoformat(), "limit": 100}),
        "snapshots of a model, last day": ("/reports/snapshots", {
            "model_id": "mean_reversion", "start": (last - timedelta(days=1)).isoformat(), "limit": 100}),
        "checkpoints, newest 5": ("/reports/checkpoints", {"limit": 5}),
        "emissions/latest": ("/reports/emissions/latest", {}),
        "model score series (72 h)": ("/reports/models/mean_reversion/scores", {}),
        "lag": ("/reports/lag", {}),
        "participant page": ("/", {}),
    }


def measure(url: str, requests_per_read: int) -> dict[str, float]:
    import httpx

    from crunch_assets.api import ReportCompetition, create_app
    from competitions.btc_updown.definitions import SPEC
    from crunch_assets.checkpoints import PayoutAccounts
    from resources.store.database import CrunchDatabase
    from tests.api.conftest import LiveServer

    spec = replace(SPEC, start=START, checkpoint_interval_seconds=86400)
    app = create_app([ReportCompetition(spec, PayoutAccounts(), CrunchDatabase(url=url))], read_env=False)
    medians = {}
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        lag = client.get("/reports/lag").json()
        for name, (path, params) in reads(lag).items():
            for _ in range(3):  # warm the pool and the caches
                assert client.get(path, params=params).status_code == 200, (path, params)
            timings = []
            for _ in range(requests_per_read):
                began = time.perf_counter()
                response = client.get(path, params=params)
                timings.append(time.perf_counter() - began)
                assert response.status_code == 200
            medians[name] = statistics.median(timings) * 1000
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60, help="timed requests per read")
    args = parser.parse_args()
    logging.getLogger("dagster").setLevel(logging.WARNING)
    data_dir = Path(tempfile.mkdtemp(prefix="crunch-bench-api-"))
    data_dir.chmod(0o755)
    os.environ.pop("CRUNCH_DATABASE_URL", None)
    os.environ["CRUNCH_DATA_DIR"] = str(data_dir)
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from competitions.btc_updown.definitions import SPEC, build_definitions
    from crunch_assets.replay import replay
    from resources.database_url import start_embedded_server
    from resources.store.database import CrunchDatabase, dispose_engines

    server_url = start_embedded_server(data_dir)
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")

    def database(name: str) -> str:
        return make_url(server_url).set(database=name).render_as_string(hide_password=False)

    spec = replace(SPEC, start=START, checkpoint_interval_seconds=86400)
    with admin.connect() as connection:
        connection.execute(sa.text("CREATE DATABASE bench_week1"))
    began = time.perf_counter()
    defs = build_definitions(spec=spec, automation_running=False, database=CrunchDatabase(url=database("bench_week1")))
    replay(defs, spec, START, START + WEEK)
    print(f"replayed week 1 in {time.perf_counter() - began:.0f} s", flush=True)
    dispose_engines()
    with admin.connect() as connection:
        connection.execute(sa.text("CREATE DATABASE bench_week4 TEMPLATE bench_week1"))
    began = time.perf_counter()
    defs4 = build_definitions(spec=spec, automation_running=False, database=CrunchDatabase(url=database("bench_week4")))
    replay(defs4, spec, START + WEEK, START + 4 * WEEK)
    print(f"replayed weeks 2-4 in {time.perf_counter() - began:.0f} s", flush=True)
    with admin.connect() as connection:
        for name in ("bench_week1", "bench_week4"):
            rows = connection.execute(sa.text(f"SELECT pg_database_size('{name}')")).scalar()
            print(f"  {name}: {rows / 1e6:.0f} MB", flush=True)
    one = measure(database("bench_week1"), args.requests)
    four = measure(database("bench_week4"), args.requests)
    print(f"\nmedian of {args.requests} requests over loopback HTTP (ms)")
    print(f"{'read':<36} {'1 week':>8} {'4 weeks':>8} {'ratio':>6}")
    worst = 0.0
    for name in one:
        ratio = four[name] / one[name]
        worst = max(worst, ratio)
        print(f"{name:<36} {one[name]:8.2f} {four[name]:8.2f} {ratio:6.2f}")
    print(f"\nworst ratio {worst:.2f} (target <= 1.2)")
    dispose_engines()
    admin.dispose()


if __name__ == "__main__":
    main()
