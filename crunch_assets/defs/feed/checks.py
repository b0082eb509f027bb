"""The feed stage's asset check, evaluated inside the asset (and the live window) it guards."""

from __future__ import annotations

from datetime import datetime, timedelta

import dagster as dg

from crunch_assets.spec import CompetitionSpec
from resources.feeds.base import CANDLE, FeedResource
from resources.store.feeds import FeedStore

FEED_COMPLETE = "feed_has_every_candle"


def _ranges(missing: list[datetime], step: timedelta) -> list[str]:
    """Consecutive missing bars as 'start .. end' (open times) for a readable report."""
    ranges, first, last = [], None, None
    for instant in missing:
        if first is not None and instant == last + step:
            last = instant
            continue
        if first is not None:
            ranges.append(first.isoformat() if first == last else f"{first.isoformat()} .. {last.isoformat()}")
        first = last = instant
    if first is not None:
        ranges.append(first.isoformat() if first == last else f"{first.isoformat()} .. {last.isoformat()}")
    return ranges


def check_feed_complete(
    spec: CompetitionSpec, feed: FeedResource, store: FeedStore, key: dg.AssetKey, start: datetime, end: datetime
) -> dg.AssetCheckResult:
    """Every candle stream has every bar observed (closed) in [start, end); names the gaps by
    open time. Not blocking: a gap must not stop predictions; its cycles wait for prices or are
    voided. Streams of other kinds have no fixed cadence and pass."""
    if feed.kind != CANDLE:
        return dg.AssetCheckResult(asset_key=key, check_name=FEED_COMPLETE, passed=True,
                                   metadata={"note": f"{feed.kind} records have no fixed cadence to check"})
    step = timedelta(seconds=feed.granularity_seconds)
    first = datetime.fromtimestamp(-(-start.timestamp() // step.total_seconds()) * step.total_seconds(), tz=start.tzinfo)
    expected = []
    instant = first
    while instant < end:
        expected.append(instant - step)  # open time of the bar closing at `instant`
        instant += step
    streams = [feed.stream(subject) for subject in spec.subjects]
    stored = store.load_records(streams, start, end - timedelta(microseconds=1))
    gaps = {}
    for stream in streams:
        present = {r.ts_event for r in stored.get(stream, [])}
        missing = [i for i in expected if i not in present]
        if missing:
            gaps[stream.subject] = {"missing": len(missing), "ranges": _ranges(missing, step)[:20]}
    return dg.AssetCheckResult(
        asset_key=key, check_name=FEED_COMPLETE, passed=not gaps, severity=dg.AssetCheckSeverity.ERROR,
        metadata={"expected_per_subject": len(expected), "gaps": gaps},
    )
