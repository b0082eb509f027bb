"""Stage 4, rollups: hourly snapshots per model and scope, and the leaderboard.

Snapshots are incremental: an hour is summarised again only when what it depends on moved (its
counted and voided cycles, their failure values, its scores); the fingerprint of what each hour was
computed from is kept in cycle_rollups. The leaderboard ranks each declared window under the
eligibility policy (per scope and combined with the scope weights) and shows, for the checkpoint
period in progress, the standing that will be paid: same mean, same order, same eligibility and
the reward it would get, computed by the same functions as the checkpoint.
"""

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg

from crunch_assets.defs.rollups import checks
from crunch_assets import metrics
from crunch_assets.defs.checkpoints.assets import payout_entries
from crunch_assets.keys import ChainKeys
from crunch_assets.partitions import CompetitionPartitions, ceil_hour, floor_hour, leaderboard_snapshots_mapping
from crunch_assets.rules import CompetitionRules
from crunch_assets.run_config import WindowRunConfig, resolve_as_of
from crunch_assets.spec import CompetitionSpec
from crunch_assets.stages import partition_windows, readable, table_metadata
from crunch_assets.standings import rank_models, standings
from resources.model_ids import is_virtual_model_id
from resources.store.competition import CompetitionStore
from resources.store.database import CrunchDatabase
from resources.store.rows import CycleRollupRow, HourFingerprint, ScoredPrediction, SnapshotRow
from resources.store.lifecycles import PredictionStatus


@dataclass(frozen=True)
class RollupReport:
    hours_changed: int
    hours_unchanged: int
    snapshots_written: int
    scores_summarised: int


def _status_key(row: ScoredPrediction) -> str:
    if row.success:
        return "scored"
    if row.prediction_status == PredictionStatus.PENDING:
        return "rejected"  # answered, but the answer could not be scored
    return "failed" if row.prediction_status == PredictionStatus.FAILED else "absent"


def summarise(
    spec: CompetitionSpec, rules: CompetitionRules, scored: list[ScoredPrediction]
) -> list[SnapshotRow]:
    """One snapshot per (model, scope, hour) of the given scores."""
    groups: dict[tuple[str, str, datetime], list[ScoredPrediction]] = defaultdict(list)
    for row in scored:
        groups[(row.model_id, row.scope_key, floor_hour(row.cycle_at))].append(row)
    snapshots = []
    for (model_id, scope_key, hour), members in sorted(groups.items()):
        summary = rules.summarize_scores([{**m.result, "success": m.success, "value": m.value} for m in members])
        value_sum = math.fsum(m.value for m in members)
        counts = dict.fromkeys(("scored", "failed", "absent", "rejected"), 0)
        for m in members:
            counts[_status_key(m)] += 1
        summary.update({"value": value_sum / len(members), "succeeded": counts["scored"],
                        "failed": len(members) - counts["scored"]})
        snapshots.append(SnapshotRow(
            model_id=model_id, scope_key=scope_key, period_start=hour, period_end=hour + timedelta(hours=1),
            prediction_count=len(members), value_sum=value_sum,
            failure_value_sum=math.fsum(m.failure_value or 0.0 for m in members),
            result_summary=summary, status_counts=counts,
        ))
    return snapshots


def summarise_with_metrics(spec: CompetitionSpec, rules: CompetitionRules, store: CompetitionStore,
                           scored: list[ScoredPrediction], hours: list[tuple[str, datetime]]) -> list[SnapshotRow]:
    """summarise, and (hook) each hour's metric statistics in its snapshots (crunch_assets/metrics.py)."""
    snapshots = summarise(spec, rules, scored)
    if metrics.enabled(spec):
        snapshots = metrics.with_statistics(snapshots, metrics.hourly_statistics(spec, rules, store, hours))
    return snapshots


def roll_up(spec: CompetitionSpec, rules: CompetitionRules, store: CompetitionStore, start: datetime, end: datetime) -> RollupReport:
    """Summarise the hours of [start, end) whose inputs or scores changed since their last rollup."""
    current = store.hour_fingerprints(start, end)
    stored = {
        (r.scope_key, r.period_start): HourFingerprint(r.cycle_count, r.voided_count, r.failure_value_sum, r.score_count, r.last_score_id)
        for r in store.stored_rollups(start, end)
    }
    changed = sorted(key for key, fingerprint in current.items()
                     if stored.get(key) is None or not _same(stored[key], fingerprint))
    if metrics.enabled(spec):  # hours rolled up before the metrics were declared are computed once more
        changed = sorted(set(changed) | (store.hours_without_metrics(start, end) & current.keys()))
    scored = store.scored_predictions(changed)
    snapshots = summarise_with_metrics(spec, rules, store, scored, changed)
    rollups = [
        CycleRollupRow(scope_key, hour, hour + timedelta(hours=1), f.cycle_count, f.voided_count, f.failure_value_sum,
                       f.score_count, f.last_score_id)
        for (scope_key, hour), f in ((key, current[key]) for key in changed)
    ]
    written = store.write_rollups(snapshots, rollups)
    return RollupReport(len(changed), len(current) - len(changed), written, len(scored))


def _same(a: HourFingerprint, b: HourFingerprint) -> bool:
    return (a.cycle_count, a.voided_count, a.score_count, a.last_score_id) == (
        b.cycle_count, b.voided_count, b.score_count, b.last_score_id
    ) and math.isclose(a.failure_value_sum, b.failure_value_sum, rel_tol=0, abs_tol=1e-9)


def current_period(spec: CompetitionSpec, partitions: CompetitionPartitions, as_of: datetime) -> tuple[datetime, datetime]:
    """The checkpoint period containing as_of (the one whose standing the leaderboard shows)."""
    periods = partitions.checkpoint
    candidates = periods.periods_between(as_of, as_of + periods.interval)
    for _, start, end in candidates:
        if start <= as_of < end:
            return start, end
    # before the first period of a cron-based definition: the interval ending at the first start
    return as_of - periods.interval, as_of


def leaderboard_entries(
    spec: CompetitionSpec, rules: CompetitionRules, store: CompetitionStore, as_of: datetime, period: tuple[datetime, datetime]
) -> list[dict]:
    """Ranked entries as of `as_of`: every window's value per scope and combined, coverage, and
    the payout standing of the period in progress."""
    end = ceil_hour(as_of)
    longest = max(w.seconds for w in spec.leaderboard_windows)
    since = min(end - timedelta(seconds=longest), period[0])
    snapshots = store.snapshots(since, end)
    rollups = store.stored_rollups(since, end)
    per_window = {
        w.name: standings(snapshots, rollups, spec.scopes, spec.eligibility, end - timedelta(seconds=w.seconds), end)
        for w in spec.leaderboard_windows
    }
    registry = store.models()
    payout = payout_entries(spec, rules, store, snapshots, rollups, period[0], min(end, period[1]), registry=registry)
    models = {m.model_id: m for m in registry}
    field_ids = sorted({m for by_model in per_window.values() for m in by_model} | set(payout))
    ranked = rank_models({m: (per_window[spec.ranking_key].get(m).value if m in per_window[spec.ranking_key] else None)
                          for m in field_ids}, descending=spec.ranking_descending)
    longest_name = max(spec.leaderboard_windows, key=lambda w: w.seconds).name
    entries = []
    for rank, model_id in enumerate(ranked, start=1):
        info = models.get(model_id)
        entry = {"rank": rank, "model_id": model_id, "model_name": info.name if info else model_id,
                 "cruncher_index": info.cruncher_index if info else None,
                 "participant": (info.player_id if info else None) or model_id,
                 "benchmark": model_id in spec.payout.benchmark_models, "scopes": {},
                 **({"ensemble": True} if is_virtual_model_id(model_id) else {})}
        for w in spec.leaderboard_windows:
            standing = per_window[w.name].get(model_id)
            entry[w.name] = standing.value if standing else None
            entry[f"{w.name}_coverage"] = round(standing.coverage, 6) if standing else 0.0
            # complete: a scored answer in every counted cycle of the window (failures are not answers)
            entry[f"{w.name}_complete"] = bool(standing and standing.cycles and standing.answered >= standing.cycles)
            for scope_key, scope_standing in (standing.scopes.items() if standing else ()):
                entry["scopes"].setdefault(scope_key, {})[w.name] = scope_standing.value
        longest_standing = per_window[longest_name].get(model_id)
        entry["prediction_count"] = longest_standing.predictions if longest_standing else 0
        entry["payout"] = payout.get(model_id)
        entries.append(entry)
    return entries


def build_rollup_assets(
    spec: CompetitionSpec, partitions: CompetitionPartitions, keys: ChainKeys
) -> list[dg.AssetsDefinition]:
    @dg.asset(
        key=keys.snapshots,
        group_name=spec.slug,
        partitions_def=partitions.daily,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[dg.AssetDep(keys.scores, partition_mapping=dg.TimeWindowPartitionMapping(allow_nonexistent_upstream_partitions=True))],
        description="Per model, scope and hour: score count, value sum, failure values and summary; per scope and hour: the cycles that count.",
        kinds={"postgres"},
    )
    def snapshots(
        context: dg.AssetExecutionContext, config: WindowRunConfig, database: CrunchDatabase, rules: CompetitionRules
    ) -> dg.MaterializeResult:
        window = context.partition_time_window
        as_of = resolve_as_of(config, window)
        store = database.competition(spec.slug)
        per_day = {}
        totals = [0, 0, 0, 0]
        day = window.start
        while day < window.end:
            day_end = min(day + timedelta(days=1), ceil_hour(as_of))
            report = roll_up(spec, rules, store, day, day_end) if day_end > day else RollupReport(0, 0, 0, 0)
            per_day[partitions.day_key(day)] = {
                "hours_recomputed": report.hours_changed, "hours_unchanged": report.hours_unchanged,
                "snapshots_written": report.snapshots_written, "scores_summarised": report.scores_summarised,
            }
            totals = [a + b for a, b in zip(totals, (report.hours_changed, report.hours_unchanged,
                                                     report.snapshots_written, report.scores_summarised))]
            day += timedelta(days=1)
        for key, metadata in per_day.items():
            context.add_asset_metadata(metadata, partition_key=key)
        return dg.MaterializeResult(metadata={"as_of": as_of.isoformat()})

    @dg.asset(
        key=keys.leaderboard,
        group_name=spec.slug,
        partitions_def=partitions.daily,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[dg.AssetDep(keys.snapshots, partition_mapping=leaderboard_snapshots_mapping(spec))],
        description="The leaderboard as of the day's end (or the run's as_of): each window per scope and combined, "
                    "ranked, with the standing the current checkpoint period will pay.",
        kinds={"postgres"},
        check_specs=[dg.AssetCheckSpec(checks.LEADERBOARD_RANKED, asset=keys.leaderboard)],
    )
    def leaderboard(
        context: dg.AssetExecutionContext, config: WindowRunConfig, database: CrunchDatabase, rules: CompetitionRules
    ) -> dg.MaterializeResult:
        store = database.competition(spec.slug)
        checks_passed = []
        for day in partition_windows(context):  # a range run stores each day's leaderboard as of its end
            as_of = resolve_as_of(config, dg.TimeWindow(day.start, day.end))
            metadata, entries = _leaderboard_of(spec, partitions, rules, store, as_of)
            context.add_asset_metadata(metadata, partition_key=day.key)
            checks_passed.append(checks.check_leaderboard_ranked(spec, keys.leaderboard, entries))
        failed = [c for c in checks_passed if not c.passed]
        return dg.MaterializeResult(check_results=[(failed or checks_passed)[-1]])

    return [snapshots, leaderboard]


def _leaderboard_of(spec: CompetitionSpec, partitions: CompetitionPartitions, rules: CompetitionRules,
                    store: CompetitionStore, as_of: datetime) -> tuple[dict, list[dict]]:
    """Store the leaderboard as of `as_of`; its metadata for the UI and its entries."""
    period = current_period(spec, partitions, as_of - timedelta(microseconds=1))
    entries = leaderboard_entries(spec, rules, store, as_of, period)
    store.write_leaderboard(as_of, entries, {"period_start": period[0].isoformat(), "period_end": period[1].isoformat()})
    return leaderboard_metadata(spec, as_of, period, entries), entries


def leaderboard_metadata(spec: CompetitionSpec, as_of: datetime, period: tuple[datetime, datetime],
                         entries: list[dict], **extra) -> dict:
    """What every materialization of the leaderboard shows in the UI: the table (values rounded
    for reading; the store and the API keep full precision), as of when, the checkpoint period
    whose standing it shows, and one plotted number per model."""
    windows = [w.name for w in spec.leaderboard_windows]
    rows = [{"rank": e["rank"], "model": e["model_id"], **{n: readable(e[n]) for n in windows},
             "coverage": round(e[f"{spec.ranking_key}_coverage"], 4), "predictions": e["prediction_count"],
             "payout_rank": (e["payout"] or {}).get("rank"), "payout_score": readable((e["payout"] or {}).get("score")),
             "eligible": (e["payout"] or {}).get("eligible"),
             "projected_reward_pct": readable(((e["payout"] or {}).get("reward_pct") or 0) / 1e7)}
            for e in entries]
    columns = [("rank", "int"), ("model", "string"), *[(n, "float") for n in windows], ("coverage", "float"),
               ("predictions", "int"), ("payout_rank", "int"), ("payout_score", "float"), ("eligible", "bool"),
               ("projected_reward_pct", "float")]
    # numeric metadata per model: Dagster plots each over the asset's materializations
    plot = {f"{spec.ranking_key}/{e['model_id']}": readable(float(e[spec.ranking_key]))
            for e in entries[:20] if e[spec.ranking_key] is not None}
    return {
        "as_of": as_of.isoformat(),
        **extra,
        "models": len(entries),
        "checkpoint_period": f"{period[0].isoformat()} .. {period[1].isoformat()}",
        "leaderboard": table_metadata(columns, rows),
        **plot,
    }
