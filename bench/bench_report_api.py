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

import sqlalchemy as sa
from sqlalchemy.engine import make_url

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
START = datetime(2026, 1, 5, tzinfo=timezone.utc)  # a Monday
WEEK = timedelta(days=7)


def reads(lag: dict) -> dict[str, tuple[str, dict]]:
    last = datetime.fromisoformat(lag["last_scored_cycle"]["at"])
    return {
        "leaderboard": ("/competitions/btc_updown/leaderboard", {}),
        "leaderboard as of a day ago": ("/competitions/btc_updown/leaderboard", {"as_of": (last - timedelta(days=1)).isoformat()}),
        "leaderboard by window": ("/competitions/btc_updown/leaderboard", {"window": "score_steady"}),
        "predictions, newest page": ("/competitions/btc_updown/predictions", {"order": "desc", "limit": 100}),
        "predictions of a model, last hour": ("/competitions/btc_updown/predictions", {
            "model_id": "mean_reversion", "start": (last - timedelta(hours=1)).isoformat(), "limit": 100}),
        "snapshots of a model, last day": ("/competitions/btc_updown/snapshots", {
            "model_id": "mean_reversion", "start": (last - timedelta(days=1)).isoformat(), "limit": 100}),
        "checkpoints, newest 5": ("/competitions/btc_updown/checkpoints", {"limit": 5}),
        "emissions/latest": ("/competitions/btc_updown/emissions/latest", {}),
        "model score series (72 h)": ("/competitions/btc_updown/models/mean_reversion/scores", {}),
        "lag": ("/competitions/btc_updown/lag", {}),
        "participant page": ("/", {}),
    }


def measure(urls: dict[str, str], requests_per_read: int) -> dict[str, dict[str, float]]:
    """read -> label -> median ms. Both databases are served at once and the requests alternate
    between them, so a busy machine slows both alike."""
    import contextlib

    import httpx

    from competitions.btc_updown.definitions import SPEC
    from crunch_assets.api import ReportCompetition, create_app
    from crunch_assets.checkpoints import PayoutAccounts
    from resources.store.database import CrunchDatabase
    from tests.api.conftest import LiveServer

    spec = replace(SPEC, start=START, checkpoint_interval_seconds=86400)
    with contextlib.ExitStack() as stack:
        clients = {}
        for label, url in urls.items():
            app = create_app([ReportCompetition(spec, PayoutAccounts(), CrunchDatabase(url=url))], read_env=False)
            server = stack.enter_context(LiveServer(app))
            clients[label] = stack.enter_context(httpx.Client(base_url=server.url, timeout=60))
        plans = {label: reads(client.get("/competitions/btc_updown/lag").json()) for label, client in clients.items()}
        medians: dict[str, dict[str, float]] = {}
        for name in plans[next(iter(plans))]:
            timings: dict[str, list[float]] = {label: [] for label in clients}
            for round_index in range(requests_per_read + 3):
                for label, client in clients.items():
                    path, params = plans[label][name]
                    began = time.perf_counter()
                    response = client.get(path, params=params)
                    elapsed = time.perf_counter() - began
                    assert response.status_code == 200, (label, path, params, response.status_code)
                    if round_index >= 3:  # the first rounds warm the pools and caches
                        timings[label].append(elapsed)
            medians[name] = {label: statistics.median(values) * 1000 for label, values in timings.items()}
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60, help="timed requests per read")
    parser.add_argument("--data-dir", type=Path, help="keep the replayed databases here; reused when present")
    args = parser.parse_args()
    logging.getLogger("dagster").setLevel(logging.WARNING)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="crunch-bench-api-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o755)
    os.environ.pop("CRUNCH_DATABASE_URL", None)
    os.environ["CRUNCH_DATA_DIR"] = str(data_dir)
    from resources.database_url import start_embedded_server
    from resources.store.database import dispose_engines

    server_url = start_embedded_server(data_dir)
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")

    def database(name: str) -> str:
        return make_url(server_url).set(database=name).render_as_string(hide_password=False)

    with admin.connect() as connection:
        present = set(connection.execute(sa.text("SELECT datname FROM pg_database")).scalars())
    if {"bench_week1", "bench_week4"} <= present and (data_dir / "replayed").exists():
        print(f"reusing the replayed databases in {data_dir}", flush=True)
    else:
        replay_weeks(admin, database)
        (data_dir / "replayed").write_text("bench_week1, bench_week4")
    report(admin, database, args.requests)
    dispose_engines()
    admin.dispose()


def replay_weeks(admin: sa.Engine, database) -> None:
    """Week 1 into bench_week1; a copy of it, plus weeks 2-4, into bench_week4."""
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from crunch_assets.replay import replay
    from resources.store.database import CrunchDatabase, dispose_engines

    spec = replace(SPEC, start=START, checkpoint_interval_seconds=86400)
    with admin.connect() as connection:
        connection.execute(sa.text("DROP DATABASE IF EXISTS bench_week1"))
        connection.execute(sa.text("DROP DATABASE IF EXISTS bench_week4"))
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
    dispose_engines()


def report(admin: sa.Engine, database, requests: int) -> None:
    with admin.connect() as connection:
        for name in ("bench_week1", "bench_week4"):
            rows = connection.execute(sa.text(f"SELECT pg_database_size('{name}')")).scalar()
            print(f"  {name}: {rows / 1e6:.0f} MB", flush=True)
    medians = measure({"1 week": database("bench_week1"), "4 weeks": database("bench_week4")}, requests)
    print(f"\nmedian of {requests} requests per read over loopback HTTP, alternating between the two (ms)")
    print(f"{'read':<36} {'1 week':>8} {'4 weeks':>8} {'ratio':>6}")
    worst = 0.0
    for name, by_label in medians.items():
        ratio = by_label["4 weeks"] / by_label["1 week"]
        worst = max(worst, ratio)
        print(f"{name:<36} {by_label['1 week']:8.2f} {by_label['4 weeks']:8.2f} {ratio:6.2f}")
    print(f"\nworst ratio {worst:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
