"""Stage 1, the feed: a window's records from the competition's feed resource into feed_records.

A feed window holds the records *observed* in it (a candle belongs to the window of its close
time). Only what is not already fetched is fetched: the spans each fetch covered are recorded in
the store (feed_spans), so a live cycle fetches the minute it needs and a backfill the hours it
lacks. A window whose cycles need earlier history (the first window, a live start after a pause)
also fetches the lookback before it, so a live input equals a replay's.
"""

import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import dagster as dg

from crunch_assets import checks
from crunch_assets.keys import ChainKeys
from crunch_assets.partitions import CompetitionPartitions, floor_hour
from crunch_assets.run_config import WindowRunConfig, resolve_as_of
from crunch_assets.spec import CompetitionSpec
from crunch_assets.stages import RANGE_BACKFILL, call_with_deadline, chunks, partition_windows, report_partitions
from resources.feeds.base import DUPLICATE_CONFLICT, FeedResource, FeedStream
from resources.store.database import CrunchDatabase
from resources.store.feeds import AS_OF_INCLUSIVE, FeedStore, StreamSpans


class FeedConfig(WindowRunConfig):
    refetch: bool = False  # fetch the window again even where it was fetched (a source corrected its history)


@dataclass
class FeedReport:
    fetched: int = 0
    written: int = 0
    corrected: int = 0
    pages: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, str] = field(default_factory=dict)
    incomplete: list[str] = field(default_factory=list)
    observed_by_hour: dict[datetime, int] = field(default_factory=lambda: defaultdict(int))

    def metadata(self) -> dict:
        return {
            "records_fetched": self.fetched,
            "records_written": self.written,
            "records_corrected": self.corrected,
            "pages_fetched": self.pages,
            "rows_skipped": sum(self.skipped_by_reason.values()),
            "rows_skipped_by_reason": dict(self.skipped_by_reason),
            "duplicate_conflicts": self.skipped_by_reason.get(DUPLICATE_CONFLICT, 0),
            "feed_errors": dict(self.errors),
            "incomplete_fetches": list(self.incomplete),
        }


def feed_streams(spec: CompetitionSpec, feed: FeedResource) -> list[FeedStream]:
    return [feed.stream(subject) for subject in spec.subjects]


def uncovered(spans: StreamSpans, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The parts of [start, end) no fetched span covers."""
    gaps, cursor = [], start
    for span_start, span_end in spans.spans:
        if span_end <= cursor:
            continue
        if span_start >= end:
            break
        if span_start > cursor:
            gaps.append((cursor, min(span_start, end)))
        cursor = max(cursor, span_end)
        if cursor >= end:
            break
    if cursor < end:
        gaps.append((cursor, end))
    return gaps


def ingest(
    spec: CompetitionSpec,
    feed: FeedResource,
    store: FeedStore,
    start: datetime,
    end: datetime,
    as_of: datetime | None,
    *,
    refetch: bool = False,
    log=None,
) -> FeedReport:
    """Fetch and store the records observed in [start, end) (up to as_of), plus the lookback
    before `start` where it is not fetched yet. Live (as_of set) the fetch waits at most
    live_feed_wait_seconds and a failure is reported, not raised; a backfill raises."""
    now = datetime.now(timezone.utc)
    live = as_of is not None
    until = min(end, (as_of or now) + AS_OF_INCLUSIVE, now + AS_OF_INCLUSIVE)
    history_start = start - timedelta(seconds=spec.history_seconds)
    report = FeedReport()
    streams = feed_streams(spec, feed)
    store.subscribe(spec.slug, streams, spec.feed_retention_days)  # retention of shared streams honours every reader
    spans = store.spans(streams, history_start, until)
    deadline = time.monotonic() + spec.live_feed_wait_seconds
    for stream in streams:
        wanted = [(start, until)] if refetch else uncovered(spans[stream], history_start, until)
        for fetch_start, fetch_end in wanted:
            if fetch_start >= fetch_end:
                continue
            try:  # no transaction is held open across the network call
                def fetch(subject=stream.subject, a=fetch_start, b=fetch_end):
                    # bound now: a fetch that outlives its deadline must not see a later iteration's values
                    return feed.fetch_records(subject, a, b, as_of=b - AS_OF_INCLUSIVE)
                result = call_with_deadline(fetch, deadline - time.monotonic()) if live else fetch()
            except Exception as error:
                if not live:
                    raise  # a backfill that cannot fetch fails visibly, to be retried
                report.errors[stream.subject] = f"{type(error).__name__}: {error}"[:500]
                if log:
                    log.error(f"{stream.subject}: feed fetch failed; the cycle waits for the feed: {report.errors[stream.subject]}")
                break
            report.fetched += len(result.records)
            report.pages += result.pages_fetched
            for reason, count in result.skipped_by_reason().items():
                report.skipped_by_reason[reason] += count
                if log:
                    log.warning(f"{stream.subject}: skipped {count} feed row(s): {reason}")
            written = store.store_fetch(stream, result.records, (fetch_start, fetch_end) if result.complete else None)
            report.written += written.written
            report.corrected += written.corrected
            if written.corrected and log:
                log.warning(f"{stream.subject}: {written.corrected} stored record(s) changed value (source corrections)")
            if not result.complete:
                report.incomplete.append(f"{stream.subject} {fetch_start.isoformat()} .. {fetch_end.isoformat()}")
            for record in result.records:
                report.observed_by_hour[floor_hour(record.observed_at)] += 1
    return report


def build_feed_asset(spec: CompetitionSpec, partitions: CompetitionPartitions, keys: ChainKeys) -> dg.AssetsDefinition:
    @dg.asset(
        key=keys.feed_records,
        group_name=spec.slug,
        partitions_def=partitions.hourly,
        backfill_policy=RANGE_BACKFILL,
        description="The records observed in the hour (candles by close time), from the competition's feed resource.",
        kinds={"postgres"},
        check_specs=[dg.AssetCheckSpec(checks.FEED_COMPLETE, asset=keys.feed_records)],
    )
    def feed_records(
        context: dg.AssetExecutionContext, config: FeedConfig, database: CrunchDatabase, feed: FeedResource
    ) -> dg.MaterializeResult:
        windows = partition_windows(context)
        # Live, the run may be launched ahead of its cycle: wait for the due time before fetching.
        as_of = (resolve_as_of(config, dg.TimeWindow(windows[0].start, windows[-1].end),
                               wait_up_to_seconds=spec.cycle_lead_seconds + 5) if config.as_of else None)
        store = database.feeds()
        totals = FeedReport()
        per_partition: dict[str, dict] = {}
        for group in chunks(windows):
            report = ingest(spec, feed, store, group[0].start, group[-1].end, as_of, refetch=config.refetch, log=context.log)
            context.log.info(f"{group[0].key} .. {group[-1].key}: {report.fetched} fetched, {report.written} written")
            for window in group:
                per_partition[window.key] = {"records_observed_in_hour": report.observed_by_hour.get(window.start, 0)}
            totals.fetched += report.fetched
            totals.written += report.written
            totals.corrected += report.corrected
            totals.pages += report.pages
            totals.errors.update(report.errors)
            totals.incomplete += report.incomplete
            for reason, count in report.skipped_by_reason.items():
                totals.skipped_by_reason[reason] += count
        report_partitions(context, per_partition)
        gap_check = checks.check_feed_complete(spec, feed, store, keys.feed_records, windows[0].start,
                                               min(windows[-1].end, as_of + AS_OF_INCLUSIVE) if as_of else windows[-1].end)
        return dg.MaterializeResult(
            metadata={"as_of": as_of.isoformat() if as_of else None, "source": feed.source_name(), **totals.metadata()},
            check_results=[gap_check],
        )

    return feed_records
