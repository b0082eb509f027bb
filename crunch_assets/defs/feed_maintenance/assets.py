"""Feed history kept small in PostgreSQL: daily Parquet archives, then retention.

- `<slug>/feed_archive` (daily partitions): a day's records of each of the competition's feed
  streams (by ts_event, market time), one Parquet file per stream at
  `<archive dir>/<slug>/<source>/<subject>/<kind>-<granularity>/<YYYY-MM-DD>.parquet`: each
  competition keeps its own archive, so competitions sharing a source never overwrite each other's
  files. Writing is atomic (temporary file + rename) and deterministic: the same rows give
  byte-identical files, and an unchanged file is not rewritten. A day already archived is merged
  with what the store holds (the store wins for a record in both), so re-archiving a day whose
  rows retention has deleted keeps its history.
- `<slug>__feed_retention_job` (an op, scheduled daily): deletes a stream's records whose day
  ended more than the *longest* retention of every competition subscribed to that stream ago
  (feed_subscriptions), and only for days this competition's archive holds exactly; any other day
  is skipped and reported with the reason. History is never lost silently, and one competition's
  short retention never deletes what another still keeps.

Retention is an op, not an asset: it produces no data; it removes rows of `feed_records` under a
guard. It reports what it did as an observation of `feed_records` (visible on that asset's page).

The archive directory is `$CRUNCH_ARCHIVE_DIR`, else `<data dir>/archive` ($CRUNCH_DATA_DIR,
default `.crunch/`), read when a run executes.
"""

import functools
import io
import json
import os
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg

from crunch_assets.defs.feed.assets import feed_streams
from crunch_assets.keys import ChainKeys
from crunch_assets.partitions import CompetitionPartitions
from crunch_assets.spec import CompetitionSpec
from resources import clock
from resources.database_url import default_data_dir
from resources.feeds.base import FeedResource, FeedStream
from resources.store.database import CrunchDatabase
from resources.store.feeds import FeedStore

ARCHIVE_DIR_ENV = "CRUNCH_ARCHIVE_DIR"
DEFAULT_RETENTION_DAYS = 90
DAY = timedelta(days=1)

ARCHIVE_COLUMNS = ("ts_event", "open", "high", "low", "close", "volume", "price", "values_json")


@functools.cache
def archive_schema():
    """pyarrow is imported only when archiving: every run process imports this module, and
    pyarrow alone takes ~0.7 s to import."""
    import pyarrow as pa

    return pa.schema([("ts_event", pa.timestamp("us", tz="UTC"))] + [(name, pa.float64()) for name in ARCHIVE_COLUMNS[1:-1]]
                     + [("values_json", pa.string())])


# One archived record, in ARCHIVE_COLUMNS order.
ArchiveRow = tuple[datetime, float | None, float | None, float | None, float | None, float | None, float | None, str]


def archive_root() -> Path:
    configured = os.environ.get(ARCHIVE_DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else default_data_dir() / "archive"


def archive_path(root: Path, slug: str, stream: FeedStream, day: date) -> Path:
    return root / slug / stream.source / stream.subject / f"{stream.kind}-{stream.granularity}" / f"{day.isoformat()}.parquet"


# --- rows ----------------------------------------------------------------------------------------


def archive_row(ts_event: datetime, price: float | None, values: dict[str, Any]) -> ArchiveRow:
    """A stored record as an archive row: candles keep their OHLCV, other records their price and
    their values as JSON."""
    get = values.get
    return (
        ts_event.astimezone(timezone.utc),
        _float(get("open")), _float(get("high")), _float(get("low")), _float(get("close")), _float(get("volume")),
        _float(price),
        json.dumps(values, sort_keys=True, separators=(",", ":")),
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


# --- Parquet files -------------------------------------------------------------------------------


def parquet_bytes(rows: list[ArchiveRow]) -> bytes:
    """The archive file for rows sorted by ts_event. Deterministic: no write time in the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = archive_schema()
    columns = list(zip(*rows)) if rows else [[] for _ in schema]
    table = pa.Table.from_arrays(
        [pa.array(column, type=field.type) for column, field in zip(columns, schema)], schema=schema
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def read_archive(path: Path) -> list[ArchiveRow]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, schema=archive_schema())
    return [tuple(row.values()) for row in table.to_pylist()]  # column order of ARCHIVE_COLUMNS


def write_atomically(path: Path, content: bytes) -> None:
    """Readers see the old file or the new one, never a partial one (rename within a directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


@dataclass(frozen=True)
class ArchivedDay:
    path: Path
    rows: int  # rows in the file after this run
    rows_in_store: int
    status: str  # "written" | "unchanged" | "empty" (nothing stored, no file)


def archive_day(path: Path, stored_rows: list[ArchiveRow]) -> ArchivedDay:
    """Merge the stored rows into the day's file (the store wins for a ts_event in both) and write
    it when its content changes."""
    existing = read_archive(path) if path.exists() else []
    if not existing and not stored_rows:
        return ArchivedDay(path, 0, 0, "empty")
    merged = {row[0]: row for row in existing}
    merged.update((row[0], row) for row in stored_rows)
    rows = [merged[ts] for ts in sorted(merged)]
    content = parquet_bytes(rows)
    if path.exists() and path.read_bytes() == content:
        return ArchivedDay(path, len(rows), len(stored_rows), "unchanged")
    write_atomically(path, content)
    return ArchivedDay(path, len(rows), len(stored_rows), "written")


# --- retention -----------------------------------------------------------------------------------


@dataclass
class RetentionReport:
    cutoff: datetime
    rows_deleted: dict[str, int]  # per subject
    days_deleted: list[str]  # "<subject> <YYYY-MM-DD>"
    days_skipped: dict[str, str]  # "<subject> <YYYY-MM-DD>" -> why
    kept_days: dict[str, int] = field(default_factory=dict)  # per subject: the retention applied

    @property
    def total_rows_deleted(self) -> int:
        return sum(self.rows_deleted.values())


def retention_cutoff(as_of: datetime, retention_days: int) -> datetime:
    """Midnight UTC on or before as_of - retention_days: only whole days older than that go."""
    instant = (as_of - timedelta(days=retention_days)).astimezone(timezone.utc)
    return instant.replace(hour=0, minute=0, second=0, microsecond=0)


def _day_key(subject: str, day_start: datetime) -> str:
    return f"{subject} {day_start.date().isoformat()}"


def _differences(archived: list[ArchiveRow], deleted: list[ArchiveRow]) -> str | None:
    """Why the archive does not hold exactly the deleted rows, or None when it does."""
    if len(archived) != len(deleted):
        return f"archive has {len(archived)} row(s), the store {len(deleted)}"
    archived_by_ts = {row[0]: row for row in archived}
    missing = [row[0] for row in deleted if row[0] not in archived_by_ts]
    if missing:
        return f"{len(missing)} stored candle(s) not in the archive, first at {min(missing).isoformat()}"
    changed = [row[0] for row in deleted if archived_by_ts[row[0]] != row]
    if changed:
        return f"{len(changed)} candle(s) differ from the archive, first at {min(changed).isoformat()}"
    return None


def apply_retention(
    store: FeedStore, root: Path, slug: str, streams: list[FeedStream], as_of: datetime, retention_days: int
) -> RetentionReport:
    """Delete, per stream and day before the cutoff, the stored records whose archive holds
    exactly those rows (same count, times and values); skip any other day with the reason.

    The cutoff of a stream counts back the longest retention among every competition subscribed to
    it (and at least `retention_days`), so a competition sharing the stream with one that keeps
    more never deletes the other's history. Each day is deleted in its own transaction with
    DELETE .. RETURNING and compared with the archive before committing, so a row written between a
    check and the delete cannot be lost.
    """
    report = RetentionReport(cutoff=retention_cutoff(as_of, retention_days), rows_deleted={}, days_deleted=[], days_skipped={})
    for stream in streams:
        kept_days = max(retention_days, store.retention_days(stream) or 0)
        report.kept_days[stream.subject] = kept_days
        cutoff = retention_cutoff(as_of, kept_days)
        for day_start, stored_count in store.days_before(stream, cutoff):
            key = _day_key(stream.subject, day_start)
            path = archive_path(root, slug, stream, day_start.date())
            if not path.exists():
                report.days_skipped[key] = f"no archive at {path} ({stored_count} stored row(s)): materialize feed_archive"
                continue
            try:
                archived = read_archive(path)
            except Exception as error:  # an unreadable archive protects nothing
                report.days_skipped[key] = f"archive {path} unreadable: {type(error).__name__}: {error}"
                continue

            def accept(deleted: list[tuple], archived=archived, path=path) -> str | None:
                problem = _differences(archived, sorted(archive_row(*row) for row in deleted))
                return f"{problem} ({path}): re-materialize feed_archive for the day" if problem else None

            done, outcome = store.delete_day_if(stream, day_start, accept)
            if not done:
                report.days_skipped[key] = outcome
                continue
            report.rows_deleted[stream.subject] = report.rows_deleted.get(stream.subject, 0) + outcome
            report.days_deleted.append(key)
    return report


# --- definitions ---------------------------------------------------------------------------------


class RetentionConfig(dg.Config):
    retention_days: int | None = None  # unset: the competition's default
    as_of: str | None = None  # ISO-8601 UTC instant the retention counts back from; unset: now


def build_feed_maintenance(
    spec: CompetitionSpec,
    partitions: CompetitionPartitions,
    keys: ChainKeys,
    retention_days: int = DEFAULT_RETENTION_DAYS,
    running: bool = False,
) -> tuple[list[dg.AssetsDefinition], list, list[dg.ScheduleDefinition]]:
    """The archive asset, its job and the retention job, and their daily schedules (stopped
    unless `running`)."""
    if retention_days < 1:
        raise ValueError(f"retention_days must be >= 1, got {retention_days}")
    slug = spec.slug
    archive_key = keys.feed_archive
    schedule_status = dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED

    @dg.asset(
        key=archive_key,
        group_name=slug,
        partitions_def=partitions.daily,
        # The day's hours (lineage only: its last candle closes at midnight, in the next day's
        # first hourly window, which an offset in days cannot name).
        deps=[dg.AssetDep(
            keys.feed_records,
            partition_mapping=dg.TimeWindowPartitionMapping(allow_nonexistent_upstream_partitions=True),
        )],
        description="A day's records of each feed stream, one Parquet file per stream (market time, UTC).",
        kinds={"parquet"},
    )
    def feed_archive(
        context: dg.AssetExecutionContext, database: CrunchDatabase, feed: FeedResource
    ) -> dg.MaterializeResult:
        window = context.partition_time_window
        now = clock.now()
        if window.end > now:
            # A day in progress would archive a partial day (retention would then skip it).
            raise dg.Failure(f"day {window.start.date()} is not over yet (ends {window.end.isoformat()})")
        root = archive_root()
        store = database.feeds()
        days = {
            stream.subject: archive_day(
                archive_path(root, slug, stream, window.start.date()),
                [archive_row(*row) for row in store.load_day(stream, window.start)],
            )
            for stream in feed_streams(spec, feed)
        }
        for subject, day in days.items():
            if day.rows > day.rows_in_store:
                context.log.info(f"{subject}: the archive keeps {day.rows - day.rows_in_store} row(s) no longer stored")
        return dg.MaterializeResult(
            metadata={
                "source": feed.source_name(),
                "day": window.start.date().isoformat(),
                "rows": sum(day.rows for day in days.values()),
                "rows_by_subject": {subject: day.rows for subject, day in days.items()},
                "rows_in_store_by_subject": {subject: day.rows_in_store for subject, day in days.items()},
                "status_by_subject": {subject: day.status for subject, day in days.items()},
                "files": [str(day.path) for day in days.values() if day.status != "empty"],
                "archive_dir": dg.MetadataValue.path(str(root)),
            }
        )

    archive_job = dg.define_asset_job(
        f"{slug}__feed_archive_job",
        selection=dg.AssetSelection.assets(archive_key),
        partitions_def=partitions.daily,
        executor_def=dg.in_process_executor,
        description="Archive a day's feed records to Parquet.",
    )

    @dg.op(name=f"{slug}__feed_retention", description="Delete archived feed days older than the retention.")
    def feed_retention(
        context: dg.OpExecutionContext, config: RetentionConfig, database: CrunchDatabase, feed: FeedResource
    ) -> dg.Output[int]:
        days_kept = retention_days if config.retention_days is None else config.retention_days
        if days_kept < 1:
            raise ValueError(f"retention_days must be >= 1, got {days_kept}")
        as_of = datetime.fromisoformat(config.as_of) if config.as_of else clock.now()
        if as_of.tzinfo is None:
            raise ValueError(f"as_of must be timezone-aware UTC, got {config.as_of!r}")
        store = database.feeds()
        streams = feed_streams(spec, feed)
        store.subscribe(slug, streams, days_kept)
        report = apply_retention(store, archive_root(), slug, streams, as_of, days_kept)
        cutoff = report.cutoff
        for key, reason in report.days_skipped.items():
            context.log.warning(f"retention skipped {key}: {reason}")
        metadata = {
            "cutoff": cutoff.isoformat(),
            "retention_days": days_kept,
            "retention_days_applied_by_subject": report.kept_days,
            "rows_deleted": report.total_rows_deleted,
            "rows_deleted_by_subject": report.rows_deleted,
            "days_deleted": report.days_deleted,
            "days_skipped": len(report.days_skipped),
            "skipped": report.days_skipped,
        }
        context.log_event(dg.AssetObservation(asset_key=keys.feed_records, metadata=metadata))
        return dg.Output(report.total_rows_deleted, metadata=metadata)

    @dg.job(name=f"{slug}__feed_retention_job", executor_def=dg.in_process_executor,
            description=f"Delete feed records older than the retention ({retention_days} days by default, or "
                        "longer where another competition keeps the stream) whose day is archived.")
    def feed_retention_job():
        feed_retention()

    @dg.schedule(
        name=f"{slug}__feed_archive_schedule", job=archive_job, cron_schedule="45 0 * * *",
        execution_timezone="UTC", default_status=schedule_status,
        description="Archive yesterday's feed candles.",
    )
    def feed_archive_schedule(context: dg.ScheduleEvaluationContext):
        yesterday = context.scheduled_execution_time.astimezone(timezone.utc) - DAY
        if yesterday < spec.start.replace(hour=0):
            return dg.SkipReason("the competition had not started yesterday")
        return dg.RunRequest(partition_key=partitions.day_key(yesterday))

    feed_retention_schedule = dg.ScheduleDefinition(
        name=f"{slug}__feed_retention_schedule", job=feed_retention_job, cron_schedule="30 1 * * *",
        execution_timezone="UTC", default_status=schedule_status,
        description="Delete archived feed days older than the retention (after the archive run).",
    )

    return [feed_archive], [archive_job, feed_retention_job], [feed_archive_schedule, feed_retention_schedule]
