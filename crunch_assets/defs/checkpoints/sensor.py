"""The checkpoint sensor: a closed, settled and rolled-up period -> its checkpoint, in order (each
chains to the previous one's root); a PENDING checkpoint whose data or rules changed is rebuilt.

`decide_checkpoints` is the decision over `CheckpointFacts`; `build_checkpoint_sensor` the
wrapper, which reads each period's facts only as far as the decision goes (it stops at the first
period that waits or is requested)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import dagster as dg

from crunch_assets.decisions import Decision
from crunch_assets.fingerprint import rules_book
from crunch_assets.partitions import CompetitionPartitions
from crunch_assets.rules import CompetitionRules, GroundTruthResource
from crunch_assets.spec import CompetitionSpec
from resources import clock
from resources.store.database import CrunchDatabase

CHECKPOINTS_PER_TICK = 8


@dataclass(frozen=True)
class PeriodFacts:
    """One closed period as the store shows it. For a checkpoint past PENDING only `status` is read."""

    key: str
    start: datetime
    end: datetime
    status: str | None = None  # the stored checkpoint's, None: none stored
    meta: dict = field(default_factory=dict)  # the stored checkpoint's meta
    unsettled: int = 0  # cycles of the period not scored or voided
    fingerprint: dict = field(default_factory=dict)  # the store's period_fingerprint
    summarised: int = 0  # scores the period's snapshots summarise
    previous_root: str | None = None  # the previous checkpoint's chained root
    rules_fingerprint: str = ""  # the rules version the period is built under
    rules_schedule: str = ""  # the digest of the rules versions the period spans


@dataclass(frozen=True)
class CheckpointFacts:
    now: datetime
    first_cycle: datetime | None  # the first stored cycle since the start
    periods: Iterable[PeriodFacts] = ()  # closed periods in order, read lazily


def ready_before(spec: CompetitionSpec, now: datetime) -> datetime:
    """Periods ending before this are closed and past their longest horizon and the settle delay."""
    return now - timedelta(seconds=spec.max_horizon_seconds) - timedelta(seconds=spec.settle_delay_seconds)


def up_to_date(period: PeriodFacts) -> bool:
    meta = period.meta
    return period.status is not None and meta.get("fingerprint") == period.fingerprint \
        and meta.get("previous_chained_root") == period.previous_root \
        and meta.get("rules_fingerprint") == period.rules_fingerprint and meta.get("rules_schedule") == period.rules_schedule


def decide_checkpoints(spec: CompetitionSpec, partitions: CompetitionPartitions, facts: CheckpointFacts) -> Decision:
    if facts.first_cycle is None:
        return Decision.skip("no cycles yet")
    waiting = []
    for period in facts.periods:
        if period.status is not None and period.status != "PENDING":
            continue
        scores = period.fingerprint["scores"]
        if period.unsettled or scores != period.summarised:
            waiting.append(f"{period.key}: {period.unsettled} unsettled, {scores} scores vs {period.summarised} summarised")
            break  # in order: later periods wait for this one
        if scores and not up_to_date(period):
            fp = period.fingerprint
            request = dg.RunRequest(
                run_key=f"{spec.slug}:checkpoint:{period.key}:{fp['scores']}:{fp['last_score_id']}:"
                        f"{fp['voided_cycles']}:{fp.get('copy_resolution_id')}:"
                        f"{period.previous_root or ''}:{period.rules_fingerprint[:16]}:{period.rules_schedule[:16]}",
                partition_key=period.key,
            )
            why = f"{period.key}: " + ("rebuilt, its data or rules changed" if period.status else "closed and settled")
            added = (period.key,) if partitions.checkpoint.is_dynamic else ()
            # one at a time: the next one chains to this one's root
            return Decision.of([(request, why)], otherwise="", added_partition_keys=added)
    return Decision.skip("; ".join(waiting) or "every closed period is checkpointed and current")


def period_facts(database: CrunchDatabase, spec: CompetitionSpec, partitions: CompetitionPartitions,
                 first_cycle: datetime, now: datetime, book: Callable) -> Iterator[PeriodFacts]:
    """The closed periods' facts, read one period at a time as the decision asks for them."""
    store = database.competition(spec.slug)
    for key, start, end in partitions.checkpoint.periods_between(first_cycle, ready_before(spec, now))[:CHECKPOINTS_PER_TICK * 4]:
        existing = store.checkpoint(start, end)
        if existing is not None and existing.status != "PENDING":
            yield PeriodFacts(key, start, end, existing.status)
            continue
        previous = store.previous_checkpoint(start)
        rules = book()  # built under other rules than loaded now (a deployment changed them): rebuilt too
        yield PeriodFacts(
            key, start, end, existing.status if existing else None, existing.meta if existing else {},
            store.unsettled_count(start, end), store.period_fingerprint(start, end), store.summarised_count(start, end),
            previous.chained_root if previous else None, rules.checkpoint_version(start, end).fingerprint,
            rules.period_schedule_digest(start, end))


def build_checkpoint_sensor(spec: CompetitionSpec, partitions: CompetitionPartitions, checkpoint_job,
                            status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{spec.slug}__checkpoint_sensor", job=checkpoint_job, default_status=status,
        minimum_interval_seconds=spec.checkpoint_sensor_interval_seconds,
        description="Builds the checkpoint of each closed period once it is settled and rolled up, in order; "
                    "rebuilds a PENDING one whose data changed.",
    )
    def checkpoint_sensor(context: dg.SensorEvaluationContext, database: CrunchDatabase, rules: CompetitionRules,
                          ground_truth: GroundTruthResource):
        now = clock.now()
        first_cycle = database.competition(spec.slug).first_cycle_since(spec.start)
        books = []

        def book():
            if not books:
                books.append(rules_book(spec, rules, ground_truth))
            return books[0]

        periods = period_facts(database, spec, partitions, first_cycle, now, book) if first_cycle else ()
        decision = decide_checkpoints(spec, partitions, CheckpointFacts(now, first_cycle, periods))
        dynamic = partitions.checkpoint.definition if partitions.checkpoint.is_dynamic else None
        return decision.sensor_result(dynamic)

    return checkpoint_sensor
