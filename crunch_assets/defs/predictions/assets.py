"""Stage 2, predictions: every due cycle's model input (inputs table) and one prediction per model.

A cycle runs only when the feed has been fetched over its whole lookback up to its cycle time;
otherwise it waits (named in the metadata) and a later run, live or backfill, runs it with the
input a correct replay builds. A cycle already stored is never run again. Each model's answer
becomes a prediction row: a valid output PENDING; raised, timed out, crashed or invalid FAILED
with the reason; no answer ABSENT; quarantined FAILED without a call.
"""

from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterator

import dagster as dg
import pydantic

from crunch_assets.defs.predictions import checks
from crunch_assets import ensembles
from crunch_assets.defs.feed.assets import feed_streams
from crunch_assets.fingerprint import rules_book
from crunch_assets.keys import ChainKeys
from crunch_assets.model_health import QUARANTINE_META_KEY, ModelHealth, QuarantinePolicy, load_health
from crunch_assets.partitions import CompetitionPartitions, floor_hour, input_feed_mapping
from crunch_assets.records import LoadedRecords
from crunch_assets.defs.registry.assets import report_registry_sync
from crunch_assets.rules import CompetitionRules, validation_message
from crunch_assets.run_config import WindowRunConfig, parse_as_of, resolve_as_of
from crunch_assets.spec import CompetitionSpec, Scope
from crunch_assets.stages import RANGE_BACKFILL, WriteBehind, chunks, partition_windows, report_partitions
from resources.feeds.base import FeedResource
from resources.model_ids import is_virtual_model_id
from resources.model_runners.base import CallStatus, ModelCallResult, ModelRunnerResource, ModelSession
from resources.store.competition import CompetitionStore
from resources.store.database import CrunchDatabase
from resources.store.feeds import FeedStore
from resources.store.rows import CycleWrite, InputRow, ModelEventRow, PredictionRow
from resources.store.lifecycles import PredictionStatus

# A backfill writes in batches big enough for the COPY path; a live cycle is written at once.
PREDICTIONS_PER_WRITE = 2000
MAX_CYCLES_PER_WRITE = 500
# A range run sends up to this many consecutive cycles to a model at once (fewer where the
# quarantine rule could start a quarantine inside them: see _answers_ahead).
AHEAD_CYCLES = 32


class InputSchemaError(ValueError):
    """The competition's input builder produced an input its own schema rejects."""


@dataclass
class CycleReport:
    """What one run did, per hour of its cycles (a range run reports each hour's own figures)."""

    cycles_run: dict[datetime, int] = field(default_factory=lambda: defaultdict(int))
    cycles_already_stored: dict[datetime, int] = field(default_factory=lambda: defaultdict(int))
    waiting: list[tuple[datetime, str]] = field(default_factory=list)
    stored_by_hour: dict[datetime, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    quarantines: list[str] = field(default_factory=list)
    registry_changes: list[str] = field(default_factory=list)  # models the session saw join the registry

    def merge(self, other: "CycleReport") -> None:
        for hour, n in other.cycles_run.items():
            self.cycles_run[hour] += n
        for hour, n in other.cycles_already_stored.items():
            self.cycles_already_stored[hour] += n
        self.waiting += other.waiting
        for hour, counts in other.stored_by_hour.items():
            for status, n in counts.items():
                self.stored_by_hour[hour][status] += n
        self.quarantines += other.quarantines
        self.registry_changes += other.registry_changes

    def hour_metadata(self, hour: datetime) -> dict:
        made = self.stored_by_hour.get(hour, {})
        return {
            "cycles_run": self.cycles_run.get(hour, 0),
            "cycles_already_stored": self.cycles_already_stored.get(hour, 0),
            "cycles_waiting_for_feed": sum(1 for at, _ in self.waiting if floor_hour(at) == hour),
            "predictions_made": made.get(PredictionStatus.PENDING, 0),
            "predictions_failed": made.get(PredictionStatus.FAILED, 0),
            "predictions_absent": made.get(PredictionStatus.ABSENT, 0),
        }


class SessionOnDemand:
    """The model session of a run, opened on the first cycle that needs it and kept for the rest
    of the run (model processes stay warm across chunks)."""

    def __init__(self, runner: ModelRunnerResource, rules: CompetitionRules, stack: ExitStack):
        self._runner, self._rules, self._stack = runner, rules, stack
        self._session: ModelSession | None = None

    def get(self) -> ModelSession:
        if self._session is None:
            self._session = self._stack.enter_context(self._runner.open_session(self._rules.model_interface()))
        return self._session


def prediction_from_result(rules: CompetitionRules, scope: Scope, result: ModelCallResult) -> PredictionRow:
    """A runner result as a prediction: SUCCESS + valid output -> PENDING; the model raised, timed
    out, crashed or answered garbage -> FAILED with the reason; no answer -> ABSENT. The shadow
    entry (crunch_assets/whatif.py) judges a candidate's answers with it too."""
    if result.status is CallStatus.SUCCESS:
        output = result.output
        try:
            schema = rules.output_model()
            if schema is not None:
                try:
                    output = schema.model_validate(output).model_dump(mode="json")
                except pydantic.ValidationError as error:
                    raise ValueError(validation_message(error)) from None
            return PredictionRow(result.model_id, PredictionStatus.PENDING, None, result.exec_time_ms, rules.validate_output(scope, output))
        except Exception as error:  # the competition's validator names what is wrong
            return PredictionRow(result.model_id, PredictionStatus.FAILED, f"invalid output: {error}"[:1000], result.exec_time_ms, None,
                                 {"raw_output": repr(result.output)[:2000]})
    if result.status is CallStatus.ABSENT:
        return PredictionRow(result.model_id, PredictionStatus.ABSENT, result.detail or "no answer", result.exec_time_ms)
    # The report API shows the public part of these reasons (crunch_assets/failure_reasons.py reads the prefixes).
    prefix = "timeout" if result.status is CallStatus.TIMEOUT else "error"
    return PredictionRow(result.model_id, PredictionStatus.FAILED, f"{prefix}: {result.detail or ''}"[:1000], result.exec_time_ms)


def build_input(rules: CompetitionRules, scope: Scope, cycle_at: datetime, records) -> Any:
    model_input = rules.build_inference_input(scope, cycle_at, records)
    schema = rules.input_model()
    if schema is not None:
        try:
            model_input = schema.model_validate(model_input).model_dump(mode="json")
        except pydantic.ValidationError as error:
            raise InputSchemaError(
                f"the input built for {scope.key} at {cycle_at.isoformat()} does not match the declared input schema: "
                f"{validation_message(error)}"
            ) from None
    return model_input


def run_cycles(
    spec: CompetitionSpec,
    rules: CompetitionRules,
    feed: FeedResource,
    store: CompetitionStore,
    feeds: FeedStore,
    session: SessionOnDemand,
    call_timeout_seconds: float,
    start: datetime,
    end: datetime,
    as_of: datetime,
    log=None,
    on_cycle: Callable[[datetime, int, int], None] | None = None,
) -> CycleReport:
    """Run every cycle due in [start, end) up to as_of that is not stored yet and whose feed is
    fetched over its lookback. `on_cycle(cycle_at, done, total)` is called after each cycle's
    model calls (the live run's progress and heartbeat during a catch-up)."""
    report = CycleReport()
    due = spec.cycle_times(start, min(as_of + timedelta(microseconds=1), end))
    done = store.stored_cycles(start, end)
    todo = [(cycle_at, scope) for cycle_at, scope in due if (cycle_at, scope.key) not in done]
    for cycle_at, scope in due:
        if (cycle_at, scope.key) in done:
            report.cycles_already_stored[floor_hour(cycle_at)] += 1
    if not todo:
        return report
    history = timedelta(seconds=spec.history_seconds)
    streams = feed_streams(spec, feed)
    spans = feeds.spans(streams, todo[0][0] - history, todo[-1][0])
    runnable = []
    for cycle_at, scope in todo:
        lacking = [s.subject for s in streams if not spans[s].covers(cycle_at - history, cycle_at)]
        if lacking:
            report.waiting.append((cycle_at, f"{cycle_at.isoformat()} {scope.key}: feed not fetched up to the cycle for {lacking}"))
        else:
            runnable.append((cycle_at, scope))
    if report.waiting and log:
        log.warning(f"{len(report.waiting)} cycle(s) wait for the feed, first: {report.waiting[0][1]}")
    if not runnable:
        return report
    loaded = LoadedRecords(feeds.load_records(streams, runnable[0][0] - history, runnable[-1][0]))
    book = rules_book(spec, rules)
    models = session.get().models()
    report.registry_changes += [f"{e.event} {e.model_id}" for e in store.sync_models(models, runnable[0][0], complete=False)]
    # The session's models are the runner's live registry (an announced model that is stopped or
    # not connected comes back ABSENT); a runner that cannot reach the registry fails the run
    # instead of blaming every model.
    expected = sorted(m.model_id for m in models)
    policy = QuarantinePolicy(spec.quarantine_after_failures, spec.quarantine_cooldown_seconds)
    rows_per_hour = spec.cycles_per_hour
    health = load_health(store, expected, runnable[0][0], policy, rows_per_hour)
    pending: list[CycleWrite] = []
    events: list[ModelEventRow] = []

    def flush() -> None:
        batch = list(pending)

        def count(written) -> None:
            for cycle in batch:
                if (cycle.input.cycle_at, cycle.input.scope_key) in written.stored:
                    report.cycles_run[floor_hour(cycle.input.cycle_at)] += 1
                    for prediction in cycle.predictions:
                        if not is_virtual_model_id(prediction.model_id):  # the models' own predictions
                            report.stored_by_hour[floor_hour(cycle.input.cycle_at)][prediction.status] += 1

        writer.submit(store.write_cycles, batch, list(events), then=count)
        pending.clear()
        events.clear()

    with WriteBehind() as writer:  # a batch is written while the models answer the next cycles
        done_count = 0
        threshold = policy.failures_before_quarantine
        for batch in _batches(runnable, min(AHEAD_CYCLES, threshold) if threshold else AHEAD_CYCLES):
            # each cycle under the rules in force at its time (declared rules changes)
            batch_rules = [book.at(cycle_at).rules for cycle_at, _ in batch]
            inputs = [build_input(r, scope, cycle_at, loaded.view(cycle_at - history, cycle_at))
                      for r, (cycle_at, scope) in zip(batch_rules, batch)]
            calls = [r.build_model_calls(scope, model_input)
                     for r, (_, scope), model_input in zip(batch_rules, batch, inputs)]
            answered = _answers_ahead(session, calls, call_timeout_seconds, expected, health, policy,
                                      [cycle_at for cycle_at, _ in batch])
            for k, (cycle_at, scope) in enumerate(batch):
                quarantined = frozenset(m for m in expected if health[m].is_quarantined(cycle_at))
                results = {m: answers[k] for m, answers in answered.items() if k < len(answers) and m not in quarantined}
                if len(results) + len(quarantined) < len(expected):  # who was not answered ahead: this cycle alone
                    results.update(session.get().run_cycle(calls[k], call_timeout_seconds,
                                                           skip_model_ids=quarantined | results.keys()))
                rows = []
                for model_id in expected:
                    if model_id in quarantined:
                        until = health[model_id].quarantined_until
                        rows.append(PredictionRow(model_id, PredictionStatus.FAILED, f"quarantined: not called until {until.isoformat()}",
                                                  meta={QUARANTINE_META_KEY: until.isoformat()}))
                        continue
                    result = results.get(model_id) or ModelCallResult(model_id, CallStatus.ABSENT, detail="no answer from the model runner")
                    row = prediction_from_result(batch_rules[k], scope, result)
                    if result.status is not CallStatus.ABSENT:
                        until = policy.record(health[model_id], cycle_at, failed=row.status == PredictionStatus.FAILED)
                        if until is not None:
                            events.append(policy.event(model_id, cycle_at, until))
                            report.quarantines.append(f"{model_id} at {cycle_at.isoformat()} until {until.isoformat()}")
                            if log:
                                log.warning(f"{model_id} quarantined until {until.isoformat()}")
                    rows.append(row)
                if spec.ensembles:  # hook: the cycle's ensembles, from these rows (crunch_assets/ensembles.py)
                    rows += ensembles.cycle_rows(spec, scope, rows)
                pending.append(CycleWrite(InputRow(scope.key, cycle_at, cycle_at + scope.horizon, inputs[k], scope.as_dict()), rows))
                if len(pending) >= MAX_CYCLES_PER_WRITE or len(pending) * max(1, len(expected)) >= PREDICTIONS_PER_WRITE:
                    flush()
                done_count += 1
                if on_cycle:
                    on_cycle(cycle_at, done_count, len(runnable))
        if pending:
            flush()
    return report


def _batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _answers_ahead(
    session: SessionOnDemand, calls: list, timeout_seconds: float, expected: list[str],
    health: dict[str, ModelHealth], policy: QuarantinePolicy, cycle_times: list[datetime],
) -> dict[str, list[ModelCallResult]]:
    """The batch's cycles, sent at once to each model that would be called in every one of them
    whatever it answers: it is not quarantined during the batch, and it is too few failures away
    from a quarantine for one to begin before the batch's last cycle. So a model sees exactly the
    calls it would see cycle by cycle; the other models, and the cycles a model left unanswered,
    are called one cycle at a time."""
    if len(calls) < 2:
        return {}
    threshold = policy.failures_before_quarantine
    ahead = frozenset(
        m for m in expected
        if not any(health[m].is_quarantined(at) for at in cycle_times)
        and (not threshold or health[m].consecutive_failures + len(calls) - 1 < threshold)
    )
    if not ahead:
        return {}
    return session.get().run_cycles_ahead(calls, timeout_seconds, ahead)


def build_predictions_asset(spec: CompetitionSpec, partitions: CompetitionPartitions, keys: ChainKeys) -> dg.AssetsDefinition:
    @dg.asset(
        key=keys.predictions,
        group_name=spec.slug,
        partitions_def=partitions.hourly,
        backfill_policy=RANGE_BACKFILL,
        deps=[dg.AssetDep(keys.feed_records, partition_mapping=input_feed_mapping(spec))],
        description="Each cycle's model input (inputs table) and one prediction per model per cycle.",
        kinds={"postgres"},
        check_specs=[dg.AssetCheckSpec(checks.EVERY_CYCLE_STORED, asset=keys.predictions, blocking=True)],
    )
    def predictions(
        context: dg.AssetExecutionContext,
        config: WindowRunConfig,
        database: CrunchDatabase,
        feed: FeedResource,
        rules: CompetitionRules,
        model_runner: ModelRunnerResource,
    ) -> Iterator[dg.MaterializeResult]:
        windows = partition_windows(context)
        live = parse_as_of(config) is not None
        store, feeds = database.competition(spec.slug), database.feeds()
        totals = CycleReport()
        with ExitStack() as stack:
            session = SessionOnDemand(model_runner, rules, stack)
            for group in chunks(windows):
                span = dg.TimeWindow(group[0].start, group[-1].end)
                as_of = resolve_as_of(config, span, wait_up_to_seconds=spec.cycle_lead_seconds + 5)
                report = run_cycles(spec, rules, feed, store, feeds, session, model_runner.call_timeout_seconds,
                                    span.start, span.end, as_of, log=context.log)
                totals.merge(report)
                context.log.info(f"{group[0].key} .. {group[-1].key}: {sum(report.cycles_run.values())} cycle(s) run "
                                 f"up to {as_of.isoformat()}")
        due_until = min(windows[-1].end, as_of + timedelta(microseconds=1))
        statuses = store.prediction_statuses_by_hour(windows[0].start, windows[-1].end)
        report_partitions(context, {
            w.key: {**totals.hour_metadata(w.start), "window_status_counts": statuses.get(w.start, {})} for w in windows
        })
        yield dg.MaterializeResult(
            metadata={
                "as_of": as_of.isoformat(),
                "live": live,
                "waiting_for_feed": [reason for _, reason in totals.waiting[:10]],
                "quarantines_started": totals.quarantines,
            },
            check_results=[checks.check_every_cycle_stored(spec, store, keys.predictions, windows[0].start, due_until,
                                                           [reason for _, reason in totals.waiting])],
        )
        if totals.registry_changes:  # after its own: the registry this run's session registered models into
            report_registry_sync(context, keys, store, totals.registry_changes, model_runner)

    return predictions
