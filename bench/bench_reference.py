"""Side by side with the reference coordinator (crunch-node 0.1.101 from PyPI, in its own Python >= 3.12
virtualenv): the same backlog scored by both, then a live cycle and a checkpoint of both as history grows.

    .venv/bin/python bench/bench_reference.py [--days 1[,7]] [--models 21] [--repeats 3] [--ticks 5]
        [--reference-backlog-days 1] [--venv ~/.cache/crunch-dagster/reference-venv-0.1.101] [--keep]

What is compared, on one embedded PostgreSQL (ours in schema `crunch`, the reference's in its own
database `reference_bench` on the same server):

- The backlog: N days of minute cycles x M models of the BTC up/down competition, made once by our
  predictions step from the real BTC/USD candles in ../shared/data (M copies of the quickstarters, in
  their own processes). The same cycles, predictions (their stored outputs) and candles are loaded
  into the reference's tables (bulk inserts into its own SQLModel rows; its alembic migrations make
  the schema); the candles are stored at their close time, so that its default ground-truth resolver
  reads the entry and resolution prices ours does. Both then score it with the Brier skill
  1 - (p_up - y)^2: ours with the scores step (`materialize` of the scores asset over the range, as a
  backfill does: the median of --repeats fresh scorings), the reference with its score worker's own
  service (`score_worker.build_service()` configured through CRUNCH_CONFIG_MODULE, POSTGRES_* and
  FEED_* as deployed, then one `ScoreService.score_and_snapshot()`, i.e. one loop of its worker after
  an outage; split by wrapping its methods: scoring, snapshots, merkle, leaderboard, checkpoint). The
  reference logs every score at INFO, as its worker configures it (to a file here;
  --reference-log-level WARNING shows it without). Scores of both are compared prediction by
  prediction.
- A live cycle with N days of history: ours is `LiveWindow.tick` (feed, cycles, settle, rollups and
  live leaderboard) for the next cycles after the range, the model answers already stored; the
  reference is one `score_and_snapshot()` per cycle after inserting that cycle's predictions. The
  reference's history is what its worker would have stored running live for N days (one call per
  minute): predictions SCORED, one score each, one snapshot per model and call, one merkle cycle per
  call, generated in bulk with its own resolver, scoring function, aggregator and merkle hashing.
- A checkpoint of one daily period with N days of history: our checkpoint step for the last closed
  day; the reference's `CheckpointService.create_checkpoint()` with a one-day interval (its default is
  CHECKPOINT_INTERVAL_SECONDS=900; ours is weekly: both are set to a day here).

What is not measured: the reference's predict worker (model calls through its gRPC model runner; we
insert the predictions it would have stored), its feed worker (it would fetch Binance; the candles are
inserted), its report worker and API. Leaderboard rows, checkpoints and merkle nodes of past cycles
are not generated in its live history (its score loop reads only the latest of each). Cycles whose
candles have gaps are resolved differently by the two (ours voids them, the reference's resolver
falls back to one candle or leaves the prediction pending): counted in the agreement line. Scoring a
backlog of more than --reference-backlog-days days through the reference takes minutes per day: it
is skipped above that (its history and live cycle are still measured).

Dagster runs on the deployment's storage (the checkout's dagster.yaml: PostgreSQL, the same server).
--smoke runs our side alone (1 day x 2 models, 1 scoring, 2 live ticks, the export for the reference)
to check that the command runs: the reference side needs crunch-node from PyPI in its own virtualenv.

Skipped, with exit status 0, when no Python >= 3.12 is found ($CRUNCH_REFERENCE_PYTHON, python3.12 or
python3.13 on PATH, ~/.pyenv/versions/3.1[2-9]*) or crunch-node cannot be installed.
"""

from __future__ import annotations

import argparse
import atexit
import glob
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
from bench import benchkit  # noqa: E402
from bench.bench_replay import CSV, models_dir  # noqa: E402

REFERENCE = "crunch-node"
REFERENCE_VERSION = "0.1.101"
REFERENCE_DATABASE = "reference_bench"
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "crunch-dagster" / f"reference-venv-{REFERENCE_VERSION}"
START = datetime(2025, 1, 7, 1, tzinfo=timezone.utc)
HORIZON = timedelta(seconds=60)
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}  # Dagster's run logs

# The driver runs in the reference's virtualenv (Python >= 3.12, crunch-node installed); it reads a
# job file and prints one JSON line of figures. It configures the reference as a deployment does
# (environment variables, a CrunchConfig module) and calls its own services.
DRIVER = r'''
import bisect, json, logging, os, sys, time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from importlib import metadata

JOB = json.loads(open(sys.argv[1]).read())
os.environ.update(JOB["env"])
os.environ["CRUNCH_CONFIG_MODULE"] = "__main__:CONFIG"

from pydantic import BaseModel, ConfigDict
from sqlalchemy import insert, text
from sqlmodel import SQLModel

from crunch_node.crunch_config import CrunchConfig, GroundTruth, ScheduledPrediction, ScoreResult
from crunch_node.db.session import create_session, engine
from crunch_node.db.feed_records import DBFeedRecordRepository
from crunch_node.db.repositories import DBPredictionRepository
from crunch_node.db.tables import (InputRow, MerkleCycleRow, ModelRow, PredictionRow, ScoreRow,
                                   SnapshotRow, FeedRecordRow)
from crunch_node.entities.feed_record import FeedRecord
from crunch_node.entities.prediction import PredictionRecord, PredictionStatus
from crunch_node.merkle.hasher import canonical_snapshot_hash, sha256_concat
from crunch_node.merkle.tree import MerkleNode, build_merkle_tree, get_root
from crunch_node.workers import score_worker


class UpDownOutput(BaseModel):
    model_config = ConfigDict(extra="allow")
    p_up: float = 0.5


class UpDownScore(ScoreResult):
    p_up: float = 0.0
    y_up: float = 0.0


def brier_skill(prediction: UpDownOutput, ground_truth: GroundTruth) -> UpDownScore:
    y = 1.0 if getattr(ground_truth, "direction_up", False) else 0.0
    return UpDownScore(value=1.0 - (prediction.p_up - y) ** 2, p_up=prediction.p_up, y_up=y)


class BenchConfig(CrunchConfig):
    output_type: type[BaseModel] = UpDownOutput
    score_type: type[BaseModel] = UpDownScore
    scoring_function: object = brier_skill
    metrics: list[str] = []
    scheduled_predictions: list[ScheduledPrediction] = [ScheduledPrediction(
        scope_key=JOB["scope_key"], scope={"subject": JOB["subject"]},
        prediction_interval_seconds=60, resolve_horizon_seconds=JOB["horizon_seconds"])]


CONFIG = BenchConfig()
TABLES = ["merkle_nodes", "merkle_cycles", "checkpoints", "leaderboards", "snapshots", "scores", "predictions"]


def progress(message):
    print(f"  reference: {message}", file=sys.stderr, flush=True)


def utc(seconds):
    return datetime.fromtimestamp(seconds + JOB["offset_seconds"], tz=UTC)


def read_lines(name):
    with open(os.path.join(JOB["data"], name)) as handle:
        return [json.loads(line) for line in handle]


def bulk(session, table, rows, batch=5000):
    for i in range(0, len(rows), batch):
        session.execute(insert(table), rows[i:i + batch])
    session.commit()


def make_schema():
    from crunch_node.db.init_db import _run_alembic_upgrade
    try:
        _run_alembic_upgrade()
        return "alembic upgrade head"
    except Exception as error:  # what its migrate() does then
        SQLModel.metadata.create_all(engine)
        reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
        return f"SQLModel create_all, as its migrate() falls back to when alembic fails ({reason})"


def commit_latency():
    """Median seconds of a one-row INSERT + COMMIT: the reference commits once per row it saves."""
    times = []
    with engine.connect() as connection:
        connection.execute(text("CREATE TABLE bench_commit (x int)"))
        connection.commit()
        for _ in range(50):
            began = time.perf_counter()
            connection.execute(text("INSERT INTO bench_commit VALUES (1)"))
            connection.commit()
            times.append(time.perf_counter() - began)
        connection.execute(text("DROP TABLE bench_commit"))
        connection.commit()
    return sorted(times)[len(times) // 2]


def committed(session):
    time.sleep(1.5)  # backends publish their statistics within a second
    session.commit()  # a fresh transaction: statistics are read once per transaction
    value = session.execute(text(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")).scalar_one()
    session.commit()
    return value


def prediction_row(p, status):
    record = PredictionRecord(
        id=f"PRE_{p['id']}", input_id=f"INP_{p['input_id']}", model_id=p["model_id"], prediction_config_id=None,
        scope_key=p["scope_key"], scope={"subject": JOB["subject"]}, status=status,
        exec_time_ms=p["exec_time_ms"] or 0.0, inference_output=p["output"], meta={},
        performed_at=utc(p["cycle_at"]), resolvable_at=utc(p["resolvable_at"]))
    return DBPredictionRepository._domain_to_row(record).model_dump()


def input_row(i):
    return {"id": f"INP_{i['id']}", "raw_data_jsonb": i["raw_data"], "received_at": utc(i["cycle_at"])}


def load_static(session, models, inputs, candles):
    bulk(session, ModelRow.__table__, [{
        "id": m, "name": m, "deployment_identifier": m, "player_id": m, "player_name": m,
        "overall_score_jsonb": {}, "scores_by_scope_jsonb": [], "meta_jsonb": {},
        "created_at": utc(JOB["start"]), "updated_at": utc(JOB["start"])} for m in models])
    bulk(session, InputRow.__table__, [input_row(i) for i in inputs])
    rows = []
    for c in candles:
        record = FeedRecord(source=JOB["env"]["FEED_SOURCE"], subject=JOB["subject"], kind="candle",
                            granularity=JOB["env"]["FEED_GRANULARITY"], ts_event=utc(c["observed_at"]),
                            values=c["values"], ts_ingested=utc(c["observed_at"]))
        rows.append(DBFeedRecordRepository._domain_to_row(record).model_dump())
    bulk(session, FeedRecordRow.__table__, rows)


def clear(session):
    session.execute(text("TRUNCATE " + ", ".join(TABLES) + " CASCADE"))
    session.commit()


class Timers:
    """Wraps methods of the reference's service objects to time each part of a call."""

    def __init__(self):
        self.seconds = defaultdict(float)

    def wrap(self, obj, name, label):
        original = getattr(obj, name)

        def timed(*args, **kwargs):
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - began

        setattr(obj, name, timed)

    def take(self):
        taken = dict(self.seconds)
        self.seconds.clear()
        return taken


def service_with_timers():
    service = score_worker.build_service()
    service.scoring_strategy.validate_scoring_io()
    timers = Timers()
    timers.wrap(service.scoring_strategy, "_score_predictions", "score")
    timers.wrap(service.scoring_strategy, "_write_snapshots", "snapshots")
    timers.wrap(service.merkle_service, "commit_cycle", "merkle")
    timers.wrap(service.leaderboard_service, "rebuild", "leaderboard")
    timers.wrap(service.checkpoint_service, "maybe_checkpoint", "checkpoint")
    return service, timers


def timed_call(service, timers):
    began = time.perf_counter()
    service.score_and_snapshot()
    total = time.perf_counter() - began
    return {"total": total, "parts": timers.take()}


def counts(session):
    return {t: session.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("predictions", "scores", "snapshots", "merkle_cycles")}


def backlog(session, predictions, result):
    runs = []
    for attempt in range(JOB["backlog_repeats"]):
        clear(session)
        bulk(session, PredictionRow.__table__, [prediction_row(p, PredictionStatus.PENDING) for p in predictions])
        session.execute(text("ANALYZE"))  # fresh bulk-loaded tables: give the planner statistics
        session.commit()
        service, timers = service_with_timers()
        progress(f"scoring the backlog of {len(predictions):,} predictions (run {attempt + 1})")
        commits = committed(session)
        run = timed_call(service, timers)
        run["commits"] = committed(session) - commits
        run["scored"] = session.execute(text("SELECT count(*) FROM scores")).scalar_one()
        runs.append(run)
        progress(f"  {run['scored']:,} scored in {run['total']:.1f} s")
    path = os.path.join(JOB["data"], "reference_scores.jsonl")
    with open(path, "w") as handle:
        for pid, value in session.execute(text("SELECT prediction_id, result_jsonb->>'value' FROM scores")):
            handle.write(json.dumps([int(pid[4:]), float(value)]) + "\n")
    result["backlog"] = runs
    result["scores_file"] = path


class Candles:
    def __init__(self, candles):
        self.records = [FeedRecord(source=JOB["env"]["FEED_SOURCE"], subject=JOB["subject"], kind="candle",
                                   granularity=JOB["env"]["FEED_GRANULARITY"], ts_event=utc(c["observed_at"]),
                                   values=c["values"]) for c in candles]
        self.times = [r.ts_event for r in self.records]

    def window(self, start, end):
        return self.records[bisect.bisect_left(self.times, start):bisect.bisect_right(self.times, end)]


def live_history(session, predictions, candles):
    """What the score worker stores running live, one call a minute: each cycle's predictions
    scored, one snapshot per model per call, one merkle cycle per call."""
    clear(session)
    by_cycle = defaultdict(list)
    for p in predictions:
        by_cycle[p["cycle_at"]].append(p)
    pred_rows, score_rows, snapshot_rows, cycle_rows = [], [], [], []
    previous = None
    for cycle_at in sorted(by_cycle):
        members = by_cycle[cycle_at]
        now = utc(members[0]["resolvable_at"]) + timedelta(seconds=30)
        snapshots = []
        for p in members:
            row = prediction_row(p, PredictionStatus.PENDING)
            truth = CONFIG.resolve_ground_truth(candles.window(row["performed_at"], row["resolvable_at"]), None)
            if truth is None:
                pred_rows.append(row)  # stays PENDING: the live worker asks again every minute
                continue
            output = UpDownOutput.model_validate(p["output"])
            result = CONFIG.score_type.model_validate(
                brier_skill(output, GroundTruth.model_validate(truth)).model_dump()).model_dump()
            row["status"] = PredictionStatus.SCORED
            pred_rows.append(row)
            score_rows.append({"id": f"SCR_{row['id']}", "prediction_id": row["id"], "result_jsonb": result,
                               "success": True, "failed_reason": None, "scored_at": now})
            summary = CONFIG.aggregate_snapshot([result])
            snapshots.append({"id": f"SNAP_{p['model_id']}_{now.strftime('%Y%m%d_%H%M%S')}",
                              "model_id": p["model_id"], "period_start": now, "period_end": now,
                              "prediction_count": 1, "result_summary_jsonb": summary, "meta_jsonb": {},
                              "content_hash": None, "created_at": now})
        if not snapshots:
            continue
        snapshot_rows += snapshots
        leaves = [MerkleNode(hash=h, level=0, position=i, snapshot_id=s["id"], snapshot_content_hash=h)
                  for i, (s, h) in enumerate(
                      (s, canonical_snapshot_hash(s["model_id"], s["period_start"], s["period_end"],
                                                  s["prediction_count"], s["result_summary_jsonb"]))
                      for s in sorted(snapshots, key=lambda s: s["model_id"]))]
        root = get_root(build_merkle_tree(leaves))
        snapshots_root = root.hash if root else leaves[0].hash
        chained = sha256_concat(previous["chained_root"], snapshots_root) if previous else snapshots_root
        previous = {"id": f"CYC_{now.strftime('%Y%m%d_%H%M%S_%f')}",
                    "previous_cycle_id": previous["id"] if previous else None,
                    "previous_cycle_root": previous["chained_root"] if previous else None,
                    "snapshots_root": snapshots_root, "chained_root": chained,
                    "snapshot_count": len(snapshots), "created_at": now}
        cycle_rows.append(previous)
    bulk(session, PredictionRow.__table__, pred_rows)
    bulk(session, ScoreRow.__table__, score_rows)
    bulk(session, SnapshotRow.__table__, snapshot_rows)
    bulk(session, MerkleCycleRow.__table__, cycle_rows)
    session.execute(text("ANALYZE"))
    session.commit()


def main():
    level = getattr(logging, JOB["log_level"])
    score_worker.configure_logging()  # the worker's own: INFO, its format
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.FileHandler(JOB["log_file"])
    handler.setFormatter(logging.Formatter("%(asctime)s | %(name)s | %(levelname)s | %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    result = {"versions": {name: metadata.version(name) for name in
                           ("crunch-node", "sqlmodel", "SQLAlchemy", "psycopg2-binary", "pydantic")},
              "python": sys.version.split()[0]}
    result["schema"] = make_schema()
    result["commit_seconds"] = commit_latency()
    models = JOB["models"]
    inputs, predictions = read_lines("inputs.jsonl"), read_lines("predictions.jsonl")
    ticks, candle_lines = read_lines("ticks.jsonl"), read_lines("candles.jsonl")
    with create_session() as session:
        for table in TABLES + ["inputs", "feed_records", "models"]:
            session.execute(text(f"TRUNCATE {table} CASCADE"))
        session.commit()
        load_static(session, models, inputs, candle_lines)
        if JOB["backlog_repeats"]:
            backlog(session, predictions, result)
        progress(f"storing {JOB['days']} day(s) of live history ({len(predictions):,} predictions)")
        began = time.perf_counter()
        candles = Candles(candle_lines)
        live_history(session, predictions, candles)
        result["history_seconds"] = time.perf_counter() - began
        result["history"] = counts(session)
        result["history"]["pending"] = session.execute(
            text("SELECT count(*) FROM predictions WHERE status = 'PENDING'")).scalar_one()
        service, timers = service_with_timers()
        progress("checkpoint of the last day")
        began = time.perf_counter()
        checkpoint = service.checkpoint_service.create_checkpoint()
        result["checkpoint"] = {"seconds": time.perf_counter() - began,
                                "snapshots": checkpoint.meta["snapshot_count"] if checkpoint else 0}
        by_cycle = defaultdict(list)
        for p in ticks:
            by_cycle[p["cycle_at"]].append(p)
        tick_inputs = {i["id"]: i for i in read_lines("tick_inputs.jsonl")}
        result["ticks"] = []
        for cycle_at in sorted(by_cycle):
            members = by_cycle[cycle_at]
            bulk(session, InputRow.__table__, [input_row(tick_inputs[members[0]["input_id"]])])
            bulk(session, PredictionRow.__table__, [prediction_row(p, PredictionStatus.PENDING) for p in members])
            run = timed_call(service, timers)
            run["scored"] = session.execute(text(
                "SELECT count(*) FROM scores s JOIN predictions p ON p.id = s.prediction_id "
                "WHERE p.performed_at = :at"), {"at": utc(cycle_at)}).scalar_one()
            result["ticks"].append(run)
            progress(f"live cycle {len(result['ticks'])}: {run['total']:.2f} s")
    print(json.dumps(result, default=str))


main()
'''


def find_reference_python() -> tuple[str, str] | None:
    """(interpreter path, version) of the first Python >= 3.12 found, or None."""
    candidates = [os.environ.get("CRUNCH_REFERENCE_PYTHON")]
    candidates += [shutil.which(name) for name in ("python3.12", "python3.13")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[2-9]*/bin/python")))
    for candidate in candidates:
        if not candidate:
            continue
        try:
            found = subprocess.run([candidate, "-c", "import sys; print(sys.executable); print(*sys.version_info[:3])"],
                                   capture_output=True, text=True, timeout=30, check=True).stdout.split("\n")
        except (OSError, subprocess.SubprocessError):
            continue
        version = tuple(int(x) for x in found[1].split())
        if version >= (3, 12):
            return found[0], ".".join(map(str, version))
    return None


def ensure_reference_venv(python: str, venv: Path) -> Path:
    """The venv's interpreter, with crunch-node==REFERENCE_VERSION installed (once; cached)."""
    interpreter = venv / "bin" / "python"
    probe = [str(interpreter), "-c", f"import importlib.metadata as m; print(m.version({REFERENCE!r}))"]
    if interpreter.exists():
        installed = subprocess.run(probe, capture_output=True, text=True)
        if installed.returncode == 0 and installed.stdout.strip() == REFERENCE_VERSION:
            return interpreter
    print(f"creating {venv} with {REFERENCE}=={REFERENCE_VERSION} (once)...", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([python, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(interpreter), "-m", "pip", "install", "-q", f"{REFERENCE}=={REFERENCE_VERSION}"],
                   check=True)
    return interpreter


def reference_environment(url: str) -> dict[str, str]:
    """POSTGRES_* (and PGHOST for a socket directory) naming the reference database on our server."""
    import sqlalchemy as sa

    parsed = sa.engine.make_url(url)
    engine = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {REFERENCE_DATABASE} WITH (FORCE)"))
        connection.execute(sa.text(f"CREATE DATABASE {REFERENCE_DATABASE}"))
        port = connection.execute(sa.text("SHOW port")).scalar_one()
    engine.dispose()
    env = {"POSTGRES_USER": parsed.username or "postgres", "POSTGRES_PASSWORD": parsed.password or "",
           "POSTGRES_PORT": str(parsed.port or port), "POSTGRES_DB": REFERENCE_DATABASE}
    socket_dir = parsed.query.get("host")
    if parsed.host:
        env["POSTGRES_HOST"] = parsed.host
    else:  # a socket directory: the reference's URL gets no host, libpq takes PGHOST
        env["POSTGRES_HOST"] = ""
        env["PGHOST"] = socket_dir if isinstance(socket_dir, str) else socket_dir[0]
    return env


@dataclass
class Side:
    """Figures of one coordinator for one history length."""

    backlog: list[float] = field(default_factory=list)
    backlog_parts: dict[str, float] = field(default_factory=dict)
    scored: int = 0
    commits: int | None = None  # transactions committed by the (last) backlog scoring
    rollups: float | None = None
    checkpoint: float | None = None  # the last (daily) period's
    checkpoints: list[float] = field(default_factory=list)
    ticks: list[float] = field(default_factory=list)
    tick_parts: list[dict[str, float]] = field(default_factory=list)


def committed(engine) -> int:
    """Transactions committed in the current database so far (statistics lag by up to a second)."""
    import sqlalchemy as sa

    time.sleep(1.5)
    with engine.connect() as connection:
        return connection.execute(sa.text(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")).scalar_one()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _dumps(value) -> str:
    return json.dumps(value, default=str)


class Ours:
    """Our chain on the embedded PostgreSQL, one competition (slug) per history length."""

    def __init__(self, data_dir: Path, models: int, instance):
        self.data_dir, self.models, self.instance = data_dir, models, instance  # Dagster on PostgreSQL
        self.models_dir = models_dir(models, data_dir)

    def run(self, days: int, repeats: int, ticks: int, export: Path) -> Side:
        import sqlalchemy as sa

        from competitions.btc_updown.definitions import SPEC, build_definitions
        from crunch_assets.defs.live_window import window as live
        from crunch_assets.keys import ChainKeys
        from crunch_assets.partitions import build_partitions
        from crunch_assets.replay import materialize_range
        from crunch_assets.defs.predictions.assets import SessionOnDemand
        from resources.feeds.csv_replay import CsvReplayFeed
        from resources.model_runners.local import LocalModelRunner
        from resources.store.database import engine_for

        side = Side()
        end = START + timedelta(days=days)
        spec = replace(SPEC, slug=f"bench_reference_{days}d", start=START, checkpoint_interval_seconds=86400)
        runner = LocalModelRunner(models_dir=str(self.models_dir), call_timeout_seconds=5.0)
        defs = build_definitions(spec=spec, feed=CsvReplayFeed(path=str(CSV)), model_runner=runner,
                                 automation_running=False)
        keys, partitions = ChainKeys.for_slug(spec.slug), build_partitions(spec)
        instance = self.instance
        first, last = partitions.hour_key(START), partitions.hour_key(end - timedelta(hours=1))
        tick_hour = partitions.hour_key(end)
        print(f"ours: feed and predictions of {days} day(s) + 1 hour x {self.models} models...", flush=True)
        materialize_range(defs, [keys.feed_records], first, partitions.hour_key(end + timedelta(hours=1)), instance,
                          QUIET)
        materialize_range(defs, [keys.predictions], first, tick_hour, instance, QUIET)
        engine = engine_for()
        self.export(engine, spec.slug, end, ticks, export)
        with engine.connect() as connection:
            side.scored = connection.execute(sa.text(
                "SELECT count(*) FROM crunch.predictions WHERE competition = :c AND cycle_at < :end"),
                {"c": spec.slug, "end": end}).scalar_one()
        for attempt in range(repeats):
            with engine.begin() as connection:  # score the same predictions afresh
                connection.execute(sa.text("DELETE FROM crunch.scores WHERE competition = :c"), {"c": spec.slug})
                connection.execute(sa.text("UPDATE crunch.inputs SET status = 'RECEIVED', actuals = NULL, "
                                           "failure_value = NULL WHERE competition = :c"), {"c": spec.slug})
            commits = committed(engine)
            began = time.perf_counter()
            materialize_range(defs, [keys.scores], first, last, instance, QUIET)
            side.backlog.append(time.perf_counter() - began)
            side.commits = committed(engine) - commits
            print(f"ours: scores step {side.backlog[-1]:.2f} s (run {attempt + 1})", flush=True)
        with engine.connect() as connection:
            scored = connection.execute(sa.text("SELECT count(*) FROM crunch.scores WHERE competition = :c"),
                                        {"c": spec.slug}).scalar_one()
        assert scored == side.scored, (scored, side.scored)
        first_day, last_day = partitions.day_key(START), partitions.day_key(end - timedelta(microseconds=1))
        began = time.perf_counter()
        materialize_range(defs, [keys.snapshots], first_day, last_day, instance, QUIET)
        materialize_range(defs, [keys.leaderboard], first_day, last_day, instance, QUIET)
        side.rollups = time.perf_counter() - began
        periods = partitions.checkpoint
        closed = [(key, s, e) for key, s, e in periods.periods_between(START.replace(hour=0) - periods.interval, end)
                  if s >= START.replace(hour=0) and e <= end]
        for key, _, _ in closed:  # in order: each chains to the previous one's root
            began = time.perf_counter()
            materialize_range(defs, [keys.emission_checkpoints], key, key, instance, QUIET)
            side.checkpoints.append(time.perf_counter() - began)
        side.checkpoint = side.checkpoints[-1] if side.checkpoints else None
        side.backlog_parts = {"scores": median(side.backlog), "snapshots+leaderboard": side.rollups,
                              "checkpoints": sum(side.checkpoints)}
        self.live_ticks(defs, spec, partitions, end, ticks, side, live, SessionOnDemand)
        return side

    def live_ticks(self, defs, spec, partitions, end, ticks, side, live, SessionOnDemand) -> None:
        """LiveWindow.tick for the first cycles after the range, each as of its resolution."""
        from contextlib import ExitStack

        resources = defs.resources
        settle_seconds = []
        original_settle = live.settle

        def timed_settle(*args, **kwargs):
            began = time.perf_counter()
            try:
                return original_settle(*args, **kwargs)
            finally:
                settle_seconds.append(time.perf_counter() - began)

        live.settle = timed_settle
        try:
            with ExitStack() as stack:
                window = live.LiveWindow(spec, partitions, resources["rules"], resources["feed"],
                                         resources["ground_truth"], resources["model_runner"], resources["database"],
                                         SessionOnDemand(resources["model_runner"], resources["rules"], stack),
                                         logging.getLogger("bench_reference"))
                rollup_seconds = []
                original_roll_up = window.roll_up

                def timed_roll_up(as_of):
                    began = time.perf_counter()
                    try:
                        return original_roll_up(as_of)
                    finally:
                        rollup_seconds.append(time.perf_counter() - began)

                window.roll_up = timed_roll_up
                for k in range(ticks):
                    as_of = end + timedelta(minutes=k) + HORIZON + timedelta(seconds=spec.settle_delay_seconds + 1)
                    began = time.perf_counter()
                    window.tick(end, as_of, final=True)
                    side.ticks.append(time.perf_counter() - began)
                    side.tick_parts.append({"settle": settle_seconds[-1], "rollups+leaderboard": rollup_seconds[-1]})
        finally:
            live.settle = original_settle
        scored = window.progress.settled.by_hour.get(end, {})
        print(f"ours: {ticks} live ticks, median {median(side.ticks):.3f} s "
              f"({scored.get('scored', 0) + scored.get('penalised', 0)} predictions scored)", flush=True)

    def export(self, engine, slug: str, end: datetime, ticks: int, directory: Path) -> None:
        """The backlog (answered predictions, their cycles' inputs, the candles) for the reference."""
        import sqlalchemy as sa

        directory.mkdir(parents=True, exist_ok=True)
        tick_end = end + timedelta(minutes=ticks)
        prediction_sql = sa.text(
            "SELECT p.id, p.input_id, p.model_id, p.scope_key, p.cycle_at, i.resolvable_at, p.exec_time_ms, "
            "p.inference_output FROM crunch.predictions p JOIN crunch.inputs i ON i.id = p.input_id "
            "WHERE p.competition = :c AND p.status = 'PENDING' AND p.cycle_at >= :a AND p.cycle_at < :b "
            "ORDER BY p.cycle_at, p.model_id")
        input_sql = sa.text("SELECT id, cycle_at, raw_data FROM crunch.inputs "
                            "WHERE competition = :c AND cycle_at >= :a AND cycle_at < :b ORDER BY cycle_at")
        with engine.connect() as connection:
            for name, sql, a, b in (("predictions", prediction_sql, START, end), ("ticks", prediction_sql, end, tick_end),
                                    ("inputs", input_sql, START, end), ("tick_inputs", input_sql, end, tick_end)):
                with open(directory / f"{name}.jsonl", "w") as handle:
                    for row in connection.execute(sql, {"c": slug, "a": a, "b": b}).mappings():
                        item = dict(row)
                        item["cycle_at"] = int(item["cycle_at"].timestamp())
                        if "resolvable_at" in item:
                            item["resolvable_at"] = int(item["resolvable_at"].timestamp())
                            item["output"] = item.pop("inference_output")
                        handle.write(_dumps(item) + "\n")
            source = connection.execute(sa.text(
                "SELECT DISTINCT source, subject, granularity FROM crunch.feed_records WHERE kind = 'candle'")).one()
            with open(directory / "candles.jsonl", "w") as handle:
                rows = connection.execute(sa.text(
                    "SELECT ts_event, values FROM crunch.feed_records WHERE source = :s AND subject = :subject "
                    "AND kind = 'candle' AND granularity = :g AND ts_event >= :a AND ts_event < :b ORDER BY ts_event"),
                    {"s": source.source, "subject": source.subject, "g": source.granularity,
                     "a": START - timedelta(hours=1), "b": tick_end + HORIZON})
                for row in rows:  # stored at the candle's close time: the observation ours resolves with
                    handle.write(_dumps({"observed_at": int(row.ts_event.timestamp()) + 60, "values": row.values}) + "\n")
        self.feed = source


def run_reference(interpreter: Path, job: dict, directory: Path) -> dict:
    job_path = directory / "job.json"
    job_path.write_text(json.dumps(job))
    driver = directory / "reference_driver.py"
    driver.write_text(DRIVER)
    completed = subprocess.run([str(interpreter), str(driver), str(job_path)], stdout=subprocess.PIPE, text=True,
                               cwd=directory)
    if completed.returncode != 0:
        log = Path(job["log_file"])
        tail = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
        raise SystemExit("\n".join([*tail, f"the reference driver failed (exit {completed.returncode}); the last lines "
                                            f"of its log {log} are above (--keep keeps it)"]))
    return json.loads(completed.stdout.strip().splitlines()[-1])


def agreement(scores_file: str, engine, slug: str, end: datetime) -> str:
    import sqlalchemy as sa

    with engine.connect() as connection:
        ours = dict(connection.execute(sa.text(
            "SELECT prediction_id, value FROM crunch.scores WHERE competition = :c AND success AND cycle_at < :end"),
            {"c": slug, "end": end}).all())
    theirs = dict(tuple(json.loads(line)) for line in open(scores_file))
    both = set(ours) & set(theirs)
    equal = sum(1 for pid in both if abs(ours[pid] - theirs[pid]) <= 1e-9)
    return (f"{equal:,} of {len(both):,} predictions scored by both have equal scores; "
            f"scored only by ours {len(set(ours) - set(theirs)):,}, only by the reference {len(set(theirs) - set(ours)):,}")


def parts_line(parts: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in parts.items())


def median_parts(runs: list[dict[str, float]]) -> dict[str, float]:
    names = list(dict.fromkeys(name for run in runs for name in run))
    return {name: median([run.get(name, 0.0) for run in runs]) for name in names}


def conditions(reference_python: str, reference_versions: dict | None, engine) -> list[str]:
    from importlib import metadata

    import sqlalchemy as sa

    with engine.connect() as connection:
        server = connection.execute(sa.text("SHOW server_version")).scalar_one()
    head = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    ours = ", ".join(f"{name} {metadata.version(name)}" for name in ("dagster", "SQLAlchemy", "psycopg2-binary"))
    lines = [f"machine: {os.cpu_count()} cores, {platform.platform()}, PostgreSQL {server} (embedded, shared by both)",
             f"ours: crunch-dagster {head}, Python {platform.python_version()}, {ours}"]
    if reference_versions:
        lines.append(f"reference: Python {reference_python}, "
                     + ", ".join(f"{name} {version}" for name, version in reference_versions.items()))
    return lines


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", default="1", help="history lengths in days, comma-separated (e.g. 1,7)")
    parser.add_argument("--models", type=int, default=21, help="models (21 x 1,440 cycles = 30,240 predictions a day)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh scorings of the backlog by ours (median)")
    parser.add_argument("--reference-repeats", type=int, default=1, help="the same for the reference (slow)")
    parser.add_argument("--reference-backlog-days", type=int, default=1,
                        help="score the backlog through the reference only up to this many days")
    parser.add_argument("--reference-log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"],
                        help="the reference's log level (its worker uses INFO)")
    parser.add_argument("--ticks", type=int, default=5, help="live cycles timed after each history (median)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the reference's virtualenv (cached)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the data directory (server data, exported backlog, the reference's log)")
    benchkit.add_smoke_argument(parser)
    args = parser.parse_args()
    if args.smoke:
        args.days, args.models, args.repeats, args.ticks = "1", 2, 1, 2
        benchkit.smoke_banner(args)
        return smoke(args)
    history = sorted({int(d) for d in args.days.split(",")})
    found = find_reference_python()
    if found is None:
        print("skipped: no Python >= 3.12 (set CRUNCH_REFERENCE_PYTHON)")
        return 0
    reference_python, reference_python_version = found
    try:
        interpreter = ensure_reference_venv(reference_python, args.venv)
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"skipped: could not install {REFERENCE}=={REFERENCE_VERSION} into {args.venv}: {error}")
        return 0
    load_before = load()
    benchkit.conditions(f"bench_reference: {args.days} day(s) x {args.models} models")
    data_dir = Path(tempfile.mkdtemp(prefix="crunch-bench-"))
    data_dir.chmod(0o755)
    if not args.keep:  # registered before the embedded server starts: runs after its own atexit stops it
        atexit.register(shutil.rmtree, data_dir, ignore_errors=True)
    os.environ.pop("CRUNCH_DATABASE_URL", None)
    os.environ["CRUNCH_DATA_DIR"] = str(data_dir)
    logging.getLogger("dagster").setLevel(logging.WARNING)
    from resources.database_url import resolve_database_url
    from resources.store.database import engine_for

    url = resolve_database_url()
    engine = engine_for()
    ours = Ours(data_dir, args.models, benchkit.dagster_instance(data_dir))
    results: dict[int, tuple[Side, Side, dict, str | None]] = {}
    for days in history:
        print(f"== {days} day(s) x {args.models} models ==", flush=True)
        export = data_dir / f"reference_{days}d"
        mine = ours.run(days, args.repeats, args.ticks, export)
        backlog = days <= args.reference_backlog_days
        job = {
            "env": {**reference_environment(url), "FEED_SOURCE": ours.feed.source, "FEED_SUBJECTS": ours.feed.subject,
                    "FEED_KIND": "candle", "FEED_GRANULARITY": ours.feed.granularity,
                    "CHECKPOINT_INTERVAL_SECONDS": "86400", "SCORE_INTERVAL_SECONDS": "60"},
            "data": str(export), "days": days, "subject": ours.feed.subject, "scope_key": "BTC-60",
            "horizon_seconds": int(HORIZON.total_seconds()), "start": int(START.timestamp()),
            "models": sorted({json.loads(line)["model_id"] for line in open(export / "predictions.jsonl")}),
            # the reference works on the wall clock: its copy of the range ends just before now
            "offset_seconds": (int(time.time()) // 60 * 60) - int((START + timedelta(days=days, minutes=args.ticks + 2)).timestamp()),
            "backlog_repeats": args.reference_repeats if backlog else 0,
            "log_level": args.reference_log_level, "log_file": str(export / "reference.log"),
        }
        print(f"reference: {'backlog, ' if backlog else ''}live history, checkpoint and {args.ticks} live cycles "
              f"(log: {job['log_file']}{'' if args.keep else ', removed at exit without --keep'})...", flush=True)
        figures = run_reference(interpreter, job, export)
        theirs = Side(scored=mine.scored)
        for run in figures.get("backlog", []):
            theirs.backlog.append(run["total"])
            theirs.scored, theirs.commits = run["scored"], run["commits"]
        if figures.get("backlog"):
            theirs.backlog_parts = median_parts([run["parts"] for run in figures["backlog"]])
        theirs.checkpoint = figures["checkpoint"]["seconds"]
        theirs.ticks = [run["total"] for run in figures["ticks"]]
        theirs.tick_parts = [run["parts"] for run in figures["ticks"]]
        agree = agreement(figures["scores_file"], engine, f"bench_reference_{days}d",
                          START + timedelta(days=days)) if backlog else None
        results[days] = (mine, theirs, figures, agree)
    report(args, history, results, reference_python_version, engine, load_before)
    return 0


def smoke(args) -> int:
    """Our side alone, tiny: the scores step, the rollups and checkpoints, live ticks, the export."""
    logging.getLogger("dagster").setLevel(logging.WARNING)
    with benchkit.embedded_server("crunch-bench-reference-") as (data_dir, _url):
        benchkit.conditions(f"bench_reference, our side only: 1 day x {args.models} models")
        with benchkit.dagster_instance(data_dir) as instance:
            mine = Ours(data_dir, args.models, instance).run(1, args.repeats, args.ticks, data_dir / "reference_1d")
        exported = sum(1 for _ in open(data_dir / "reference_1d" / "predictions.jsonl"))
    benchkit.figure(f"ours: scores step {median(mine.backlog):.2f} s for {mine.scored:,} predictions; live tick median "
                    f"{median(mine.ticks):.3f} s; {exported:,} predictions exported for the reference")
    if not mine.ticks or not exported:
        print("FAILED: no live tick or nothing exported")
        return 1
    return 0


def report(args, history, results, reference_python, engine, load_before) -> None:
    figures = results[history[-1]][2]
    print()
    print("== bench_reference: crunch-dagster vs crunch-node " + REFERENCE_VERSION + " ==")
    for line in conditions(reference_python, figures["versions"], engine):
        print(line)
    print(f"{load_before} before, {load()} after")
    print(f"a one-row INSERT + COMMIT on this server: median {figures['commit_seconds'] * 1000:.1f} ms")
    print(f"reference schema: {figures['schema']}; reference log level {args.reference_log_level} (to a file)")
    for days in history:
        mine, theirs, figures, agree = results[days]
        print(f"\n-- {days} day(s) x {args.models} models: {mine.scored:,} predictions --")
        ours_s = median(mine.backlog)
        benchkit.figure(f"backlog, ours:      scores step {ours_s:.2f} s = {mine.scored / ours_s:,.0f} predictions/s "
              f"(median of {len(mine.backlog)}: {', '.join(f'{s:.2f}' for s in mine.backlog)}; ~{mine.commits:,} commits); "
              f"snapshots+leaderboard {mine.rollups:.2f} s, {len(mine.checkpoints)} daily checkpoint(s) "
              f"{sum(mine.checkpoints):.2f} s")
        if theirs.backlog:
            ref_s = median(theirs.backlog)
            score_s = theirs.backlog_parts.get("score", float("nan"))
            benchkit.figure(f"backlog, reference: score_and_snapshot {ref_s:.1f} s = {theirs.scored / ref_s:,.0f} predictions/s "
                  f"({theirs.scored:,} scored; median of {len(theirs.backlog)}; ~{theirs.commits:,} commits; "
                  f"{parts_line(theirs.backlog_parts)})")
            whole = sum(mine.backlog_parts.values())
            benchkit.figure(f"ratio: ours faster x{score_s / ours_s:.1f} at scoring (scores step vs the reference's "
                  f"_score_predictions {score_s:.1f} s), x{ref_s / whole:.1f} for the whole pass "
                  f"(scores, snapshots, leaderboard, checkpoint: {whole:.2f} s vs {ref_s:.1f} s)")
            print(f"agreement: {agree}")
        else:
            print(f"backlog, reference: not scored (more than --reference-backlog-days {args.reference_backlog_days})")
        history_rows = figures["history"]
        benchkit.figure(f"live cycle, ours:      tick median {median(mine.ticks):.3f} s of {len(mine.ticks)} "
              f"({parts_line(median_parts(mine.tick_parts))})")
        benchkit.figure(f"live cycle, reference: score_and_snapshot median {median(theirs.ticks):.3f} s of {len(theirs.ticks)} "
              f"({parts_line(median_parts(theirs.tick_parts))}) over {history_rows['predictions']:,} predictions, "
              f"{history_rows['snapshots']:,} snapshots ({history_rows['pending']:,} left pending) of live history")
        benchkit.figure(f"checkpoint of a day:   ours {mine.checkpoint or 0:.2f} s, reference {theirs.checkpoint:.2f} s "
              f"({figures['checkpoint']['snapshots']:,} snapshots)")
    if len(history) > 1:
        a, b = history[0], history[-1]
        (mine_a, theirs_a, _, _), (mine_b, theirs_b, _, _) = results[a], results[b]
        print(f"\n-- growth from {a} to {b} day(s) of history --")
        benchkit.figure(f"live cycle: ours x{median(mine_b.ticks) / median(mine_a.ticks):.2f}, "
              f"reference x{median(theirs_b.ticks) / median(theirs_a.ticks):.2f}")
        benchkit.figure(f"checkpoint: ours x{(mine_b.checkpoint or 0) / (mine_a.checkpoint or 1):.2f}, "
              f"reference x{theirs_b.checkpoint / theirs_a.checkpoint:.2f}")
        if mine_a.backlog and mine_b.backlog:
            rate_a, rate_b = mine_a.scored / median(mine_a.backlog), mine_b.scored / median(mine_b.backlog)
            benchkit.figure(f"backlog scoring rate, ours: {rate_a:,.0f} -> {rate_b:,.0f} predictions/s")


if __name__ == "__main__":
    raise SystemExit(main())
