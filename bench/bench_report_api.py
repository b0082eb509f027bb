"""Report API reads with 1 week vs 4 weeks of history stored: a read must not grow with history.

The synthetic feed and the quickstarter models are replayed through the whole chain (daily
checkpoints) for one week into a fresh embedded PostgreSQL; that database is copied and three more
weeks are replayed into the copy. The API is then served by uvicorn on loopback over each database
and every hot read is timed over real HTTP; the medians and the 4-week / 1-week ratio are printed
(target <= 1.2). Exits 1 when a read misses the target (not in --smoke).

    .venv/bin/python bench/bench_report_api.py [--requests 60] [--hours 168] [--times 4] [--data-dir DIR] [--smoke]
"""

import argparse
import logging
import statistics
import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
from bench import benchkit  # noqa: E402

START = datetime(2026, 1, 5, tzinfo=timezone.utc)  # a Monday
TARGET_RATIO = 1.2


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


def spec_for(checkpoint_hours: int):
    from competitions.btc_updown.definitions import SPEC

    return replace(SPEC, start=START, checkpoint_interval_seconds=3600 * checkpoint_hours)


def measure(urls: dict[str, str], requests_per_read: int, checkpoint_hours: int) -> dict[str, dict[str, float]]:
    """read -> label -> median ms. Both databases are served at once and the requests alternate
    between them, so a busy machine slows both alike."""
    import contextlib

    import httpx

    from crunch_assets.api import ReportCompetition, create_app
    from resources.payout_accounts import PayoutAccounts
    from resources.store.database import CrunchDatabase
    from tests.api.conftest import LiveServer

    spec = spec_for(checkpoint_hours)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60, help="timed requests per read")
    parser.add_argument("--hours", type=int, default=168, help="history of the short database (default a week)")
    parser.add_argument("--times", type=int, default=4, help="the long database holds this many times as much")
    parser.add_argument("--checkpoint-hours", type=int, default=24, help="the checkpoint period (hours)")
    parser.add_argument("--data-dir", type=Path, help="keep the replayed databases here; reused when present")
    benchkit.add_smoke_argument(parser)
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.hours, args.times, args.checkpoint_hours = 3, 2, 2, 1
    benchkit.smoke_banner(args)
    if args.hours < 1 or args.times < 2:
        parser.error("--hours must be >= 1 and --times >= 2")
    logging.getLogger("dagster").setLevel(logging.WARNING)
    data_dir = args.data_dir or benchkit.fresh_data_dir("crunch-bench-api-")
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o755)
    server_url = benchkit.use_embedded_server(data_dir)
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")

    def database(name: str) -> str:
        return make_url(server_url).set(database=name).render_as_string(hide_password=False)

    labels = {"short": span_label(args.hours), "long": span_label(args.hours * args.times)}
    try:
        wanted = f"hours={args.hours} times={args.times} checkpoint_hours={args.checkpoint_hours}"
        marker = data_dir / "replayed"
        with admin.connect() as connection:
            present = set(connection.execute(sa.text("SELECT datname FROM pg_database")).scalars())
        if {"bench_short", "bench_long"} <= present and marker.exists() and marker.read_text() == wanted:
            print(f"reusing the replayed databases in {data_dir} ({wanted})", flush=True)
        else:
            marker.unlink(missing_ok=True)
            replay_spans(admin, database, data_dir, args, labels)
            marker.write_text(wanted)
        worst = report(admin, database, args, labels)
    finally:
        admin.dispose()
        benchkit.stop_embedded_server(data_dir, remove=args.data_dir is None)
    return 1 if worst > TARGET_RATIO and not args.smoke else 0


def span_label(hours: int) -> str:
    if hours % 168 == 0:
        return f"{hours // 168} week{'s' if hours > 168 else ''}"
    if hours % 24 == 0:
        return f"{hours // 24} day{'s' if hours > 24 else ''}"
    return f"{hours} h"


def replay_spans(admin: sa.Engine, database, data_dir: Path, args, labels: dict[str, str]) -> None:
    """The short span into bench_short; a copy of it, plus the rest of the long span, into bench_long."""
    from competitions.btc_updown.definitions import build_definitions
    from crunch_assets.replay import replay
    from resources.store.database import CrunchDatabase, dispose_engines

    spec = spec_for(args.checkpoint_hours)
    short_end, long_end = START + timedelta(hours=args.hours), START + timedelta(hours=args.hours * args.times)
    with admin.connect() as connection:
        connection.execute(sa.text("DROP DATABASE IF EXISTS bench_short"))
        connection.execute(sa.text("DROP DATABASE IF EXISTS bench_long"))
        connection.execute(sa.text("CREATE DATABASE bench_short"))
    with benchkit.dagster_instance(data_dir) as instance:  # Dagster's runs in the server's own database
        began = time.perf_counter()
        defs = build_definitions(spec=spec, automation_running=False, database=CrunchDatabase(url=database("bench_short")))
        replay(defs, spec, START, short_end, instance=instance)
        print(f"replayed {labels['short']} in {time.perf_counter() - began:.0f} s", flush=True)
        dispose_engines()
        with admin.connect() as connection:
            connection.execute(sa.text("CREATE DATABASE bench_long TEMPLATE bench_short"))
        began = time.perf_counter()
        defs = build_definitions(spec=spec, automation_running=False, database=CrunchDatabase(url=database("bench_long")))
        replay(defs, spec, short_end, long_end, instance=instance)
        print(f"replayed the rest of {labels['long']} in {time.perf_counter() - began:.0f} s", flush=True)
        dispose_engines()


def report(admin: sa.Engine, database, args, labels: dict[str, str]) -> float:
    with admin.connect() as connection:
        for name in ("bench_short", "bench_long"):
            size = connection.execute(sa.text(f"SELECT pg_database_size('{name}')")).scalar()
            print(f"  {name}: {size / 1e6:.0f} MB", flush=True)
    benchkit.conditions(f"report API over loopback HTTP, {labels['short']} vs {labels['long']} stored")
    short, long = labels["short"], labels["long"]
    medians = measure({short: database("bench_short"), long: database("bench_long")}, args.requests,
                      args.checkpoint_hours)
    print(f"\nmedian of {args.requests} requests per read over loopback HTTP, alternating between the two (ms)")
    print(f"{'read':<36} {short:>8} {long:>8} {'ratio':>6}")
    worst = 0.0
    for name, by_label in medians.items():
        ratio = by_label[long] / by_label[short]
        worst = max(worst, ratio)
        print(f"{name:<36} {by_label[short]:8.2f} {by_label[long]:8.2f} {ratio:6.2f}")
    benchkit.figure(f"worst ratio {worst:.2f} (target <= {TARGET_RATIO})")
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
