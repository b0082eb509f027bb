"""What every stage's asset shares: the partitions a run covers, per-partition metadata, and the
live feed deadline."""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Iterator

import dagster as dg

# A range run (a backfill of many partitions, `--partition-range`) is processed this many hours at
# a time: bounded memory, a commit per chunk, progress in the log.
CHUNK_HOURS = 24
# Every chain asset accepts a range in one run (the CLI's --partition-range needs it); the asset
# works through it a chunk at a time.
RANGE_BACKFILL = dg.BackfillPolicy.single_run()

logger = logging.getLogger("crunch_assets")


@dataclass(frozen=True)
class PartitionWindow:
    key: str
    start: datetime
    end: datetime


def partition_windows(context: dg.AssetExecutionContext, window_of: Callable[[str], tuple[datetime, datetime]] | None = None) -> list[PartitionWindow]:
    """The partitions this run materializes, in order, each with its own time window."""
    windows = []
    for key in context.partition_keys:
        if window_of is not None:
            start, end = window_of(key)
        else:
            window = context.assets_def.partitions_def.time_window_for_partition_key(key)
            start, end = window.start, window.end
        windows.append(PartitionWindow(key, start, end))
    return sorted(windows, key=lambda w: w.start)


def chunks(windows: list[PartitionWindow], hours: int = CHUNK_HOURS) -> Iterator[list[PartitionWindow]]:
    """Consecutive partitions grouped into spans of at most `hours`."""
    group: list[PartitionWindow] = []
    for window in windows:
        if group and (window.start != group[-1].end or window.end - group[0].start > timedelta(hours=hours)):
            yield group
            group = []
        group.append(window)
    if group:
        yield group


def report_partitions(context: dg.AssetExecutionContext, metadata_by_key: dict[str, dict[str, Any]]) -> None:
    """Each partition's own figures on its own materialization (a range run reports each hour's
    counts, not the run's totals)."""
    for key, metadata in metadata_by_key.items():
        context.add_asset_metadata(metadata, partition_key=key)


class WriteBehind:
    """Store writes in background threads while the caller computes the next batch (PostgreSQL
    works on the other core): at most `in_flight` writes at once, each its own transaction, as it
    would be in line. With more than one, writes may commit in any order, so it is for batches
    that do not depend on each other. A failed write raises in the caller at a later `submit` or
    at the end of the `with`, after which nothing more is submitted. `then(result)` runs in the
    caller's thread once the write has committed, in submission order."""

    def __init__(self, in_flight: int = 1) -> None:
        self._in_flight = in_flight
        self._executor = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="write-behind")
        self._pending: deque[tuple[Future, Callable[[Any], None] | None]] = deque()

    def submit(self, write: Callable[..., Any], *args: Any, then: Callable[[Any], None] | None = None) -> None:
        while len(self._pending) >= self._in_flight:
            self._settle_oldest()
        self._pending.append((self._executor.submit(write, *args), then))

    def wait(self) -> None:
        """Until every write submitted has committed (the first error raised here)."""
        while self._pending:
            self._settle_oldest()

    def _settle_oldest(self) -> None:
        future, then = self._pending.popleft()
        result = future.result()
        if then is not None:
            then(result)

    def __enter__(self) -> "WriteBehind":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None:
                self.wait()
        finally:
            # On the caller's failure (or a write's), the writes in flight finish; their errors
            # give way to the one being raised.
            self._executor.shutdown(wait=True)
            self._pending.clear()


class FeedTooSlow(TimeoutError):
    pass


def call_with_deadline(fn: Callable[[], Any], seconds: float) -> Any:
    """fn() if it returns within `seconds`; else FeedTooSlow. The call goes on in a daemon thread
    (bounded by the feed's own time limits) so the cycle does not wait for it."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as error:  # handed to the caller below
            outcome["error"] = error

    worker = threading.Thread(target=target, daemon=True, name="feed-fetch")
    worker.start()
    worker.join(max(0.0, seconds))
    if worker.is_alive():
        raise FeedTooSlow(f"the feed did not answer within {seconds:.1f} s; the cycle waits for a later run")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def readable(value: float | None, significant: int = 6) -> float | None:
    """A float rounded for reading in the UI (significant digits: a CRPS of 0.000123456 keeps its
    digits, a reward percentage of 33.33333333 becomes 33.3333). The store keeps full precision."""
    if value is None or not math.isfinite(value):
        return value
    return float(f"{value:.{significant}g}")


def table_metadata(columns: list[tuple[str, str]], rows: list[dict[str, Any]]) -> dg.TableMetadataValue:
    """A sortable, typed table for the Dagster UI. columns: (name, type) with type one of
    string, int, float, bool."""
    schema = dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in columns])
    records = [dg.TableRecord({name: _cell(row.get(name), kind) for name, kind in columns}) for row in rows]
    return dg.MetadataValue.table(records, schema=schema)


def _cell(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "bool":
        return bool(value)
    return str(value)
