"""Stage 3, scores: resolve what happened for each cycle, score every prediction of it.

Per cycle, whatever happens stays in the cycle:
- the truth is asked only once the feed has been fetched over [cycle - staleness, resolvable_at];
  a resolver that raises voids the cycle with the error as reason ("resolver error: ..."), the rest
  of the window is scored and the run succeeds;
- a cycle whose truth is missing is voided only when the stored feed proves it will not come (the
  feed has been fetched up to resolvable_at + void_after_seconds without it) or, live (as_of set),
  when that time has passed on the clock; a backfill in any order decides the same way. The void
  reason is what the resolver named (TruthMissing: e.g. the entry price at the cycle, or the
  resolution price at resolvable_at);
- a voided cycle is tried again on every materialization while its checkpoint period is not past
  PENDING: once its prices are stored it is scored, like any other;
- each answered prediction is scored by the competition (an exception or an unusable value is
  that prediction's failure, recorded, never retried); the optional cross-sectional step adjusts
  the cycle's successful scores together; FAILED, ABSENT and unusable predictions score the
  cycle's failure value (the spec's failure policy: a constant, or relative to the field).
Predictions are never rewritten: a score row says a prediction was scored, the input's status
says its cycle was resolved or voided.
"""

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Callable

import dagster as dg
import pydantic

from crunch_assets.defs.scores import checks
from crunch_assets import ensembles
from crunch_assets.defs.feed.assets import feed_streams
from crunch_assets.fingerprint import rules_book
from crunch_assets.keys import ChainKeys
from crunch_assets.partitions import CompetitionPartitions, floor_hour, truth_feed_mapping
from crunch_assets.records import LoadedRecords
from crunch_assets.rules import CompetitionRules, GroundTruthResource, TruthMissing, TruthUnavailable, validation_message
from crunch_assets.run_config import WindowRunConfig, parse_as_of
from crunch_assets.spec import CompetitionSpec, Scope
from crunch_assets.stages import CHUNK_HOURS, RANGE_BACKFILL, WriteBehind, chunks, partition_windows, report_partitions
from resources import clock
from resources.feeds.base import FeedResource
from resources.model_ids import is_virtual_model_id
from resources.store.bulk import COPY_MIN_ROWS
from resources.store.competition import CompetitionStore
from resources.store.database import CrunchDatabase
from resources.store.feeds import FeedStore
from resources.store.rows import CycleToSettle, Resolution, RulesDocument, ScoreRow, StoredPrediction, Voiding
from resources.store.lifecycles import InputStatus, PredictionStatus

# A range run scores at least this many hours at a time: small enough that writing one chunk
# overlaps reading and scoring the next (bench/bench_scores.py), large enough to keep queries few.
SCORE_CHUNK_HOURS = 6


def score_chunk_hours(spec: CompetitionSpec, model_count: int) -> int:
    """Hours per chunk of a range run: SCORE_CHUNK_HOURS, or more (up to a day) where that would
    hold fewer score rows than take the COPY path (few models: smaller batches are slower)."""
    rows_per_hour = max(1, model_count) * spec.cycles_per_hour
    return min(CHUNK_HOURS, max(SCORE_CHUNK_HOURS, math.ceil(COPY_MIN_ROWS / rows_per_hour)))


@dataclass
class SettleReport:
    by_hour: dict[datetime, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    void_reasons: list[str] = field(default_factory=list)
    resolver_errors: list[str] = field(default_factory=list)
    ensemble_waits: list[str] = field(default_factory=list)

    def count(self, cycle_at: datetime, what: str, n: int = 1) -> None:
        self.by_hour[floor_hour(cycle_at)][what] += n

    def merge(self, other: "SettleReport") -> None:
        for hour, counts in other.by_hour.items():
            for what, n in counts.items():
                self.by_hour[hour][what] += n
        self.void_reasons += other.void_reasons
        self.resolver_errors += other.resolver_errors
        self.ensemble_waits += other.ensemble_waits

    def hour_metadata(self, hour: datetime) -> dict:
        counts = self.by_hour.get(hour, {})
        return {name: counts.get(name, 0) for name in
                ("scored", "penalised", "waiting_for_ground_truth", "waiting_for_ensemble_window", "cycles_voided",
                 "cycles_rescored", "resolver_errors")}


def stored_scope(spec: CompetitionSpec, cycle: CycleToSettle) -> Scope:
    """The scope a stored cycle was made for: the spec's of its key, else the one stored with the
    cycle (a scope since removed from the spec). The what-if and shadow entry read it too."""
    scope = spec.scope(cycle.scope_key)
    if scope is not None:
        return scope
    stored = cycle.scope
    return Scope(stored["subject"], stored["resolve_horizon_seconds"], stored["prediction_interval_seconds"],
                 stored.get("step_seconds"))


@dataclass(frozen=True)
class Scorer:
    """What scoring a batch needs from the rules, resolved once."""

    score: Callable[[Scope, Any, Any], dict]
    schema: type[pydantic.BaseModel] | None
    rules: CompetitionRules

    @classmethod
    def of(cls, rules: CompetitionRules) -> "Scorer":
        return cls(rules.scoring_callable(), rules.score_model(), rules)


def score_answer(scorer: Scorer, scope: Scope, prediction: StoredPrediction, truth: Any) -> dict:
    """The competition's score of one answered prediction; an exception or an unusable result is
    the prediction's failure (reason kept), never an error of the window."""
    try:
        result = dict(scorer.score(scope, prediction.inference_output, truth))
        if scorer.schema is not None:
            try:
                result = scorer.schema.model_validate(result).model_dump(mode="json")
            except pydantic.ValidationError as error:
                return {"value": None, "success": False, "failed_reason": f"invalid score result: {validation_message(error)}"}
    except Exception as error:
        return {"value": None, "success": False, "failed_reason": f"scoring error: {type(error).__name__}: {error}"[:1000]}
    value = result.get("value")
    if not (result.get("success") and type(value) in (float, int) and math.isfinite(value)):
        result["success"] = False
        result["failed_reason"] = result.get("failed_reason") or f"unusable score value {value!r}"
    return result


_STORED_IN_COLUMNS = frozenset(("value", "success", "failed_reason"))


def _json_safe(result: dict) -> dict:
    """The result's own fields for the JSONB column: what the score row's columns already hold is
    not stored twice, and non-finite numbers (not JSON) are dropped."""
    return {k: v for k, v in result.items()
            if k not in _STORED_IN_COLUMNS and not (type(v) is float and not math.isfinite(v))}


def score_cycle(
    spec: CompetitionSpec, scorer: Scorer, scope: Scope, cycle: CycleToSettle, truth: Any
) -> tuple[list[ScoreRow], float | None, str | None]:
    """(score rows, the cycle's failure value, a reason to void it instead)."""
    results: dict[int, dict] = {}
    for prediction in cycle.predictions:
        if prediction.status == PredictionStatus.PENDING:
            results[prediction.id] = score_answer(scorer, scope, prediction, truth)
    model_of = {p.id: p.model_id for p in cycle.predictions}
    # An ensemble (a virtual model) is scored like a model but never moves a real model's score:
    # it is left out of the cross-sectional step's field and of the relative failure value.
    virtual = {pid for pid, model_id in model_of.items() if is_virtual_model_id(model_id)}
    if scorer.rules.adjusts_cycles:
        successful = {model_of[pid]: r for pid, r in results.items() if r["success"] and pid not in virtual}
        if successful:
            try:
                adjusted = scorer.rules.adjust_cycle(scope, cycle.cycle_at, dict(successful))
                if set(adjusted) != set(successful):
                    raise ValueError(f"returned results for {sorted(adjusted)}, expected {sorted(successful)}")
                for pid in sorted(virtual & results.keys()):  # each ensemble as one more model of the field
                    if results[pid]["success"]:
                        try:
                            alongside = scorer.rules.adjust_cycle(scope, cycle.cycle_at,
                                                                  {**successful, model_of[pid]: results[pid]})
                            adjusted[model_of[pid]] = alongside[model_of[pid]]
                        except Exception as error:  # the ensemble's failure, never the cycle's
                            results[pid] = {"value": None, "success": False, "failed_reason":
                                            f"cross-sectional step error: {type(error).__name__}: {error}"[:1000]}
                for pid in list(results):
                    if model_of[pid] in adjusted:
                        value = adjusted[model_of[pid]].get("value")
                        if not (isinstance(value, (int, float)) and math.isfinite(value)):
                            if pid in virtual:  # the ensemble's failure, never the cycle's
                                results[pid] = {"value": None, "success": False,
                                                "failed_reason": f"non-finite adjusted value {value!r}"}
                                continue
                            raise ValueError(f"non-finite adjusted value {value!r} for {model_of[pid]}")
                        results[pid] = {**adjusted[model_of[pid]], "success": True}
            except Exception as error:
                return [], None, f"cross-sectional step error: {type(error).__name__}: {error}"[:1000]
    failure_value = spec.failure_policy.value_for(
        [r["value"] for pid, r in results.items() if r["success"] and pid not in virtual], spec.higher_is_better
    )
    if failure_value is None:
        return [], None, "no successful prediction in the cycle to set its relative failure value"
    rows = []
    scope_key, cycle_at = cycle.scope_key, cycle.cycle_at
    for prediction in cycle.predictions:
        result = results.get(prediction.id)
        if result is None:  # FAILED or ABSENT when made
            rows.append(ScoreRow(prediction.id, prediction.model_id, scope_key, cycle_at, failure_value, False,
                                 f"{prediction.status}: {prediction.status_reason}", {}))
        elif result["success"]:
            rows.append(ScoreRow(prediction.id, prediction.model_id, scope_key, cycle_at, float(result["value"]), True,
                                 None, _json_safe(result)))
        else:
            rows.append(ScoreRow(prediction.id, prediction.model_id, scope_key, cycle_at, failure_value, False,
                                 result["failed_reason"], _json_safe(result)))
    return rows, failure_value, None


class EnsembleWindows:
    """The score windows of the windowed ensembles (members top_n / min_metric, weighting
    inverse_variance; crunch_assets/ensembles.py) of one settle call: read once from the store for
    the call's cycles, with the cycles this call settles before a later one added as they are."""

    def __init__(self, spec: CompetitionSpec, store: CompetitionStore, cycles: list[CycleToSettle], versions) -> None:
        self.store = store
        self.reach = max((e.window_seconds for v in versions for e in v.spec.ensembles if e.windowed), default=0)
        self.statuses: dict[str, dict[datetime, str]] = {}
        self.values: dict[str, dict[datetime, list[tuple[str, float]]]] = {}
        self.span = (min(c.cycle_at for c in cycles) - timedelta(seconds=self.reach), max(c.cycle_at for c in cycles))

    def needed(self, cycle_spec: CompetitionSpec, cycle: CycleToSettle) -> bool:
        stored = {p.model_id for p in cycle.predictions}
        return any(e.windowed and e.model_id not in stored for e in cycle_spec.ensembles)

    def _read(self, scope_key: str) -> None:
        if scope_key not in self.statuses:
            self.statuses[scope_key], values = self.store.window_scores(scope_key, *self.span)
            by_cycle = self.values[scope_key] = defaultdict(list)
            for cycle_at, model_id, value in values:
                by_cycle[cycle_at].append((model_id, value))

    def settled(self, cycle: CycleToSettle, rows: list[ScoreRow]) -> None:
        if self.reach:
            self._read(cycle.scope_key)
            self.statuses[cycle.scope_key][cycle.cycle_at] = "VOIDED" if not rows else "RESOLVED"
            self.values[cycle.scope_key][cycle.cycle_at] = [(r.model_id, r.value) for r in rows]

    def add_ensembles(self, cycle_spec: CompetitionSpec, scope: Scope,
                      cycle: CycleToSettle) -> tuple[CycleToSettle, str | None]:
        """The cycle with its windowed ensembles' predictions added (stored now, once), or the
        reason it waits: a cycle of a window not stored or not settled yet."""
        self._read(cycle.scope_key)
        statuses = self.statuses[cycle.scope_key]
        members = ensembles.answered_outputs((p.model_id, p.status, p.inference_output) for p in cycle.predictions)
        stored = {p.model_id for p in cycle.predictions}
        built = []
        for ensemble in cycle_spec.ensembles:
            if not ensemble.windowed or ensemble.model_id in stored:
                continue
            due = ensembles.window_cycles_due(cycle_spec, ensemble, scope, cycle.cycle_at)
            unsettled = [at for at in due if statuses.get(at) not in ("RESOLVED", "VOIDED")]
            if unsettled:
                return cycle, (f"{cycle.cycle_at.isoformat()} {cycle.scope_key}: ensemble {ensemble.name} waits for "
                               f"{len(unsettled)} cycle(s) of its window to be stored and scored, first "
                               f"{unsettled[0].isoformat()} ({statuses.get(unsettled[0], 'not stored')})")
            stats = ensembles.window_stats(self.values[cycle.scope_key], [at for at in due if statuses[at] == "RESOLVED"])
            built.append(ensembles.build(ensemble, scope, members, stats, cycle_spec.higher_is_better))
        ids = self.store.add_predictions(cycle.input_id, cycle.scope_key, cycle.cycle_at, built)
        added = [StoredPrediction(ids[r.model_id], r.model_id, r.status, r.status_reason, r.inference_output) for r in built]
        return replace(cycle, predictions=sorted([*cycle.predictions, *added], key=lambda p: p.model_id)), None


def settle(
    spec: CompetitionSpec,
    rules: CompetitionRules,
    truth: GroundTruthResource,
    feed: FeedResource,
    store: CompetitionStore,
    feeds: FeedStore,
    start: datetime,
    end: datetime,
    as_of: datetime | None,
    log=None,
    writer: WriteBehind | None = None,
) -> SettleReport:
    """Resolve and score the unresolved (or voided) cycles of [start, end); see the module doc.
    With a `writer`, the settlement is written behind (the caller waits for it before reading the
    scores back); without one, it is committed before this returns."""
    report = SettleReport()
    now = clock.now()
    live = as_of is not None
    resolvable_until = min(as_of or now, now) - timedelta(seconds=spec.settle_delay_seconds)
    cycles = store.cycles_to_settle(start, end, resolvable_until, not_before=store.locked_until())
    if not cycles:
        return report
    # Each cycle is resolved and scored under the rules in force at its cycle time (declared changes).
    book = rules_book(spec, rules, truth)
    versions = book.in_period(cycles[0].cycle_at, cycles[-1].cycle_at + timedelta(microseconds=1))
    streams = feed_streams(spec, feed)
    earliest = min(c.cycle_at for c in cycles) - timedelta(seconds=max(v.spec.max_price_staleness_seconds for v in versions))
    latest = max(c.resolvable_at for c in cycles)
    void_reach = timedelta(seconds=max(v.spec.void_after_seconds for v in versions))
    spans = feeds.spans(streams, earliest, latest + void_reach) if truth.reads_feed else {}
    loaded = LoadedRecords(feeds.load_records(streams, earliest, latest)) if truth.reads_feed else LoadedRecords({})
    scores, resolutions, voidings = [], [], []
    windows = EnsembleWindows(spec, store, cycles, versions)
    if windows.reach and writer is not None:
        writer.wait()  # a window reads the scores of the chunks written behind
    scorers: dict[str, Scorer] = {}
    documents: dict[str, RulesDocument] = {}

    def void(cycle: CycleToSettle, reason: str, fingerprint: str) -> None:
        windows.settled(cycle, [])
        if cycle.status != InputStatus.VOIDED:
            voidings.append(Voiding(cycle.input_id, reason, fingerprint))
            report.count(cycle.cycle_at, "cycles_voided")
            report.void_reasons.append(f"{cycle.cycle_at.isoformat()} {cycle.scope_key}: {reason}")

    for cycle in cycles:
        version = book.at(cycle.cycle_at)
        cycle_spec, cycle_rules, fingerprint = version.spec, version.rules, version.fingerprint
        if fingerprint not in scorers:
            scorers[fingerprint] = Scorer.of(cycle_rules)
            documents[fingerprint] = RulesDocument(fingerprint, version.cycle_digest, version.document)
        scorer = scorers[fingerprint]
        staleness = timedelta(seconds=cycle_spec.max_price_staleness_seconds)
        void_after = timedelta(seconds=cycle_spec.void_after_seconds)
        scope = stored_scope(spec, cycle)
        deadline = cycle.resolvable_at + void_after
        fetched = not truth.reads_feed or all(spans[s].covers(cycle.cycle_at - staleness, cycle.resolvable_at) for s in streams)
        value, missing = None, None
        if fetched:
            view = loaded.view(cycle.cycle_at - staleness, cycle.resolvable_at, include_since=True)
            try:
                value = truth.resolve(cycle_rules, scope, cycle.cycle_at, cycle.resolvable_at, view,
                                      cycle_spec.max_price_staleness_seconds)
            except TruthMissing as named:
                missing = str(named)
            except TruthUnavailable as unavailable:
                void(cycle, f"ground truth unavailable: {unavailable}"[:1000], fingerprint)
                continue
            except Exception as error:  # one cycle's resolver failure never blocks the window
                reason = f"resolver error: {type(error).__name__}: {error}"[:1000]
                report.resolver_errors.append(f"{cycle.cycle_at.isoformat()} {cycle.scope_key}: {reason}")
                report.count(cycle.cycle_at, "resolver_errors")
                if log:
                    log.error(f"{cycle.scope_key} {cycle.cycle_at.isoformat()}: {reason}")
                void(cycle, reason, fingerprint)
                continue
        if value is None:
            proven = truth.reads_feed and all(spans[s].covers(cycle.cycle_at - staleness, deadline) for s in streams)
            if proven or (live and now >= deadline):
                why = "the stored feed moved past" if proven else "the clock passed"
                what = missing or (f"the resolver found no truth for the cycle at {cycle.cycle_at.isoformat()} "
                                   f"resolving at {cycle.resolvable_at.isoformat()} (it did not name what is missing)")
                void(cycle, f"ground truth missing: {what}; {why} {deadline.isoformat()} "
                            f"({cycle_spec.void_after_seconds} s after resolution)"[:1000], fingerprint)
            else:
                report.count(cycle.cycle_at, "waiting_for_ground_truth", len(cycle.predictions) or 1)
            continue
        if windows.needed(cycle_spec, cycle):  # windowed ensembles are built now, from a settled window
            cycle, waiting = windows.add_ensembles(cycle_spec, scope, cycle)
            if waiting:
                report.count(cycle.cycle_at, "waiting_for_ensemble_window", len(cycle.predictions) or 1)
                report.ensemble_waits.append(waiting)
                if log:
                    log.warning(waiting)
                continue
        rows, failure_value, void_reason = score_cycle(cycle_spec, scorer, scope, cycle, value)
        if void_reason is not None:
            void(cycle, void_reason, fingerprint)
            continue
        windows.settled(cycle, rows)
        scores += rows
        resolutions.append(Resolution(cycle.input_id, value, failure_value, fingerprint))
        if cycle.status == InputStatus.VOIDED:
            report.count(cycle.cycle_at, "cycles_rescored")
        successes = sum(1 for r in rows if r.success)
        report.count(cycle.cycle_at, "scored", successes)
        report.count(cycle.cycle_at, "penalised", len(rows) - successes)
    used = {r.rules_fingerprint for r in resolutions} | {v.rules_fingerprint for v in voidings}
    recorded = [documents[fingerprint] for fingerprint in sorted(used)]
    if writer is None:
        store.write_settlement(scores, resolutions, voidings, recorded)
    else:
        writer.submit(store.write_settlement, scores, resolutions, voidings, recorded)
    return report


def build_scores_asset(spec: CompetitionSpec, partitions: CompetitionPartitions, keys: ChainKeys) -> dg.AssetsDefinition:
    @dg.asset(
        key=keys.scores,
        group_name=spec.slug,
        partitions_def=partitions.hourly,
        backfill_policy=RANGE_BACKFILL,
        deps=[dg.AssetDep(keys.predictions), dg.AssetDep(keys.feed_records, partition_mapping=truth_feed_mapping(spec))],
        description="One score per prediction of every resolved cycle; FAILED/ABSENT predictions score the cycle's failure value.",
        kinds={"postgres"},
        check_specs=[dg.AssetCheckSpec(checks.SCORES_FINITE, asset=keys.scores, blocking=True)],
    )
    def scores(
        context: dg.AssetExecutionContext,
        config: WindowRunConfig,
        database: CrunchDatabase,
        feed: FeedResource,
        rules: CompetitionRules,
        ground_truth: GroundTruthResource,
    ) -> dg.MaterializeResult:
        as_of = parse_as_of(config)
        windows = partition_windows(context)
        store, feeds = database.competition(spec.slug), database.feeds()
        totals = SettleReport()
        with WriteBehind(in_flight=2) as writer:  # chunks are written while the next ones are read and scored
            for group in chunks(windows, score_chunk_hours(spec, len(store.models()))):
                totals.merge(settle(spec, rules, ground_truth, feed, store, feeds, group[0].start, group[-1].end,
                                    as_of, log=context.log, writer=writer))
        unsettled = store.unsettled_by_hour(windows[0].start, windows[-1].end)
        report_partitions(context, {
            w.key: {**totals.hour_metadata(w.start), "still_unscored": unsettled.get(w.start, 0)} for w in windows
        })
        return dg.MaterializeResult(
            metadata={
                "as_of": as_of.isoformat() if as_of else None,
                "void_reasons": totals.void_reasons[:10],
                "resolver_errors": totals.resolver_errors[:10],
                "ensemble_waits": totals.ensemble_waits[:10],
            },
            check_results=[checks.check_scores_finite(store, keys.scores, windows[0].start, windows[-1].end)],
        )

    return scores
