"""Stage 1, the feed: a window's records from the competition's feed resource into feed_records.

A feed window holds the records *observed* in it (a candle belongs to the window of its close
time). Only what is not already fetched is fetched: the spans each fetch covered are recorded in
the store (feed_spans), so a live cycle fetches the minute it needs and a backfill the hours it
lacks. A window whose cycles need earlier history (the first window, a live start after a pause)
also fetches the lookback before it, so a live input equals a replay's.

A fetch with defects (malformed rows, or one time with two different values) is not complete:
its well-formed records are stored (a conflicting time has neither value), each defect is logged
and reported (a conflict with both values), and its span is not recorded, so the cycles that need
it wait and it is fetched again. The refetches are bounded (`FeedResource.defect_refetches`, after
`defect_refetch_backoff_seconds`, doubling: 10, 20, 40 s by default, so the source is not
hammered): when the defect is still there after them it is the source's, and the span is recorded
with the defective instants missing. The gap check names them like any missing record, and the
materialization lists them under `defective_spans_accepted`.
"""

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import dagster as dg

from crunch_assets.defs.feed import checks
from crunch_assets.keys import ChainKeys
from crunch_assets.partitions import CompetitionPartitions, floor_hour
from crunch_assets.run_config import WindowRunConfig, resolve_as_of
from crunch_assets.spec import CompetitionSpec
from crunch_assets.stages import RANGE_BACKFILL, call_with_deadline, chunks, partition_windows, report_partitions
from resources import clock
from resources.feeds.base import DUPLICATE_CONFLICT, FeedFetchResult, FeedResource, FeedStream, fetch_deadline
from resources.store.database import CrunchDatabase
from resources.store.feeds import AS_OF_INCLUSIVE, DefectEpisode, FeedStore, StreamSpans

MAX_REPORTED_DEFECTS = 50  # rows listed in a report (all are counted)


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
    defect_rows: list[dict] = field(default_factory=list)  # the first MAX_REPORTED_DEFECTS
    defective_fetches: list[str] = field(default_factory=list)  # not recorded: fetched again
    defects_accepted: list[str] = field(default_factory=list)  # recorded with the defective instants missing

    def merge(self, other: "FeedReport") -> None:
        self.fetched += other.fetched
        self.written += other.written
        self.corrected += other.corrected
        self.pages += other.pages
        self.errors.update(other.errors)
        self.incomplete += other.incomplete
        for reason, count in other.skipped_by_reason.items():
            self.skipped_by_reason[reason] += count
        for hour, count in other.observed_by_hour.items():
            self.observed_by_hour[hour] += count
        self.defect_rows += other.defect_rows[: max(0, MAX_REPORTED_DEFECTS - len(self.defect_rows))]
        self.defective_fetches += other.defective_fetches
        self.defects_accepted += other.defects_accepted

    def metadata(self) -> dict:
        return {
            "records_fetched": self.fetched,
            "records_written": self.written,
            "records_corrected": self.corrected,
            "pages_fetched": self.pages,
            "rows_skipped": sum(self.skipped_by_reason.values()),
            "rows_skipped_by_reason": dict(self.skipped_by_reason),
            "duplicate_conflicts": self.skipped_by_reason.get(DUPLICATE_CONFLICT, 0),
            "defective_rows": self.defect_rows[:MAX_REPORTED_DEFECTS],
            "defective_spans_refetched": list(self.defective_fetches[-20:]),
            "defective_spans_accepted": list(self.defects_accepted[-20:]),
            "feed_errors": dict(self.errors),
            "incomplete_fetches": list(self.incomplete),
        }


@dataclass(frozen=True)
class DefectRefetchPolicy:
    """How often a defective span is fetched again before its defects are taken as the source's."""

    refetches: int
    backoff_seconds: float

    @classmethod
    def of(cls, feed: FeedResource) -> "DefectRefetchPolicy":
        return cls(feed.defect_refetches, feed.defect_refetch_backoff_seconds)

    def next_fetch_at(self, episode: DefectEpisode) -> datetime:
        return episode.last_fetch + timedelta(seconds=self.backoff_seconds * 2 ** (episode.fetches - 1))


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
    sleep: Callable[[float], None] = clock.sleep,
) -> FeedReport:
    """Fetch and store the records observed in [start, end) (up to as_of), plus the lookback
    before `start` where it is not fetched yet.

    Live (as_of set) the whole ingest waits at most live_feed_wait_seconds: one deadline across
    every fetch of every stream, which the HTTP feeds honour themselves, so no fetch outlives the
    wait. A fetch that fails or does not fit is reported (and kept as the stream's last error),
    not raised, and the cycles it holds back wait for a later tick. A backfill raises."""
    now = clock.now()
    live = as_of is not None
    until = min(end, (as_of or now) + AS_OF_INCLUSIVE, now + AS_OF_INCLUSIVE)
    history_start = start - timedelta(seconds=spec.history_seconds)
    report = FeedReport()
    streams = feed_streams(spec, feed)
    store.subscribe(spec.slug, streams, spec.feed_retention_days)  # retention of shared streams honours every reader
    spans = store.spans(streams, history_start, until)
    episodes = store.defect_episodes(streams)
    policy = DefectRefetchPolicy.of(feed)
    deadline = time.monotonic() + spec.live_feed_wait_seconds
    # The HTTP feeds give up a little before the wait does, so their own error (what the source
    # did) is the one reported rather than the bare "did not answer".
    fetch_gives_up = deadline - min(0.5, 0.1 * spec.live_feed_wait_seconds)

    def fail(stream: FeedStream, message: str) -> None:
        report.errors[stream.subject] = message[:500]
        store.note_fetch_error(stream, report.errors[stream.subject], clock.now())
        if log:
            log.error(f"{stream.subject}: feed fetch failed; the cycles that need it wait: {report.errors[stream.subject]}")

    def fetch_span(stream: FeedStream, fetch_start: datetime, fetch_end: datetime) -> bool:
        """Fetch one span until it is recorded (True) or, live, left to a later tick (False)."""
        while True:
            episode = episodes.get(stream)
            if episode is not None:
                due = policy.next_fetch_at(episode)
                wait_seconds = (due - clock.now()).total_seconds()
                if wait_seconds > 0 and live:
                    report.defective_fetches.append(
                        f"{stream.subject}: {episode.fetches} defective fetch(es) since {episode.first_seen.isoformat()}, "
                        f"next at {due.isoformat()} ({episode.detail})")
                    return False
                if wait_seconds > 0:
                    sleep(wait_seconds)  # a backfill waits here: bounded by the refetches' backoff
            if live and time.monotonic() >= deadline:
                fail(stream, f"FeedTooSlow: not fetched, the live feed wait ({spec.live_feed_wait_seconds:g} s) was used up")
                return False

            def fetch(subject=stream.subject, a=fetch_start, b=fetch_end) -> FeedFetchResult:
                # bound now: a fetch that outlives its deadline must not see a later iteration's values
                with fetch_deadline(fetch_gives_up):  # the HTTP feeds stop by the live wait's end themselves
                    return feed.fetch_records(subject, a, b, as_of=b - AS_OF_INCLUSIVE)

            try:  # no transaction is held open across the network call
                result = call_with_deadline(fetch, deadline - time.monotonic()) if live else feed.fetch_records(
                    stream.subject, fetch_start, fetch_end, as_of=fetch_end - AS_OF_INCLUSIVE)
            except Exception as error:
                if not live:
                    raise  # a backfill that cannot fetch fails visibly, to be retried
                fail(stream, f"{type(error).__name__}: {error}")
                return False
            result.finish()
            report.fetched += len(result.records)
            report.pages += result.pages_fetched
            for reason, count in result.skipped_by_reason().items():
                report.skipped_by_reason[reason] += count
                if log:
                    log.warning(f"{stream.subject}: skipped {count} feed row(s): {reason}")
            defects = result.defects
            span = (fetch_start, fetch_end) if result.complete else None
            next_episode = None
            if defects:
                found = _describe_defects(defects)
                for row in defects[: max(0, MAX_REPORTED_DEFECTS - len(report.defect_rows))]:
                    report.defect_rows.append({"subject": stream.subject, "reason": row.reason, "raw": row.raw,
                                               "at": row.ts_event.isoformat() if row.ts_event else None})
                fetches = (episode.fetches if episode else 0) + 1
                what = f"{stream.subject} {fetch_start.isoformat()} .. {fetch_end.isoformat()}: {found}"
                if fetches > policy.refetches:
                    # The same source gave defects every time: they are its own. The defective
                    # instants stay missing (never one value picked); the gap check names them.
                    report.defects_accepted.append(f"{what}; still there after {policy.refetches} refetch(es): "
                                                   "recorded with those instants missing")
                    if log:
                        log.error(f"feed defects accepted as missing, {what}")
                else:
                    span = None
                    next_episode = DefectEpisode(episode.first_seen if episode else clock.now(),
                                                 clock.now(), fetches, found[:500])
                    report.defective_fetches.append(f"{what}; not recorded, refetch {fetches} of {policy.refetches} "
                                                    f"at {policy.next_fetch_at(next_episode).isoformat()}")
                    if log:
                        log.warning(f"feed span not complete, refetched later: {what}")
                if log:
                    for row in defects[:10]:
                        log.warning(f"{stream.subject}: {row.reason} at {row.ts_event.isoformat() if row.ts_event else '?'}: {row.raw}")
            elif episode is not None and log:
                log.info(f"{stream.subject}: feed defects gone after {episode.fetches} defective fetch(es)")
            written = store.store_fetch(stream, result.records, span, defect=next_episode)
            episodes[stream] = next_episode
            report.written += written.written
            report.corrected += written.corrected
            if written.corrected and log:
                log.warning(f"{stream.subject}: {written.corrected} stored record(s) changed value (source corrections)")
            if not result.complete:
                report.incomplete.append(f"{stream.subject} {fetch_start.isoformat()} .. {fetch_end.isoformat()}")
            for record in result.records:
                report.observed_by_hour[floor_hour(record.observed_at)] += 1
            if next_episode is None:
                return True
            if live:
                return False

    for stream in streams:
        wanted = [(start, until)] if refetch else uncovered(spans[stream], history_start, until)
        for fetch_start, fetch_end in wanted:
            if fetch_start < fetch_end and not fetch_span(stream, fetch_start, fetch_end):
                break
    return report


def _describe_defects(defects) -> str:
    counts: dict[str, int] = defaultdict(int)
    for row in defects:
        counts[row.reason] += 1
    return ", ".join(f"{count} {reason}" for reason, count in sorted(counts.items()))


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
            totals.merge(report)
        report_partitions(context, per_partition)
        gap_check = checks.check_feed_complete(spec, feed, store, keys.feed_records, windows[0].start,
                                               min(windows[-1].end, as_of + AS_OF_INCLUSIVE) if as_of else windows[-1].end)
        return dg.MaterializeResult(
            metadata={"as_of": as_of.isoformat() if as_of else None, "source": feed.source_name(), **totals.metadata()},
            check_results=[gap_check],
        )

    return feed_records
