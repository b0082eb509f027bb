"""What the report API and the page show, built from stored rows (plain dicts, JSON-ready)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Sequence

from crunch_assets.api.competitions import ReportCompetition
from crunch_assets.failure_reasons import public_reason, public_score_reason
from crunch_assets.partitions import ceil_hour
from crunch_assets.payouts import frac64_to_percent, unpayable_reasons
from crunch_assets.spec import CompetitionSpec
from crunch_assets.standings import rank_models, standings
from crunch_assets.verification import lifecycle_problems
from resources.store.payouts import AuditRow
from resources.store.reports import LagReport, PredictionReport, SnapshotReport
from resources.store.rows import CheckpointRow, DisputeRow
from resources.store.lifecycles import CheckpointStatus

SERIES_DEFAULT_HOURS = 72


def window_label(seconds: int) -> str:
    """A window's name for people: "last 6 h", "last 24 h", "last 7 days", "last 90 min"."""
    if seconds % 86400 == 0 and seconds >= 2 * 86400:
        return f"last {seconds // 86400} days"
    if seconds % 3600 == 0:
        return f"last {seconds // 3600} h"
    if seconds % 60 == 0:
        return f"last {seconds // 60} min"
    return f"last {seconds} s"


def direction_words(spec: CompetitionSpec) -> str:
    return "higher is better" if spec.ranking_descending else "lower is better"


def score_words(spec: CompetitionSpec) -> str:
    """What the score is and which way is better, e.g. "CRPS ..., lower is better"."""
    return f"{spec.score_name or 'score'}; {direction_words(spec)}"


def leaderboard_view(c: ReportCompetition, stored: tuple | None, window: str, scope: str | None) -> dict:
    """The stored leaderboard ranked by `window` (of `scope`, or combined)."""
    spec = c.spec
    base = {"ranking_key": spec.ranking_key, "window": window, "scope": scope,
            "windows": [{"name": w.name, "seconds": w.seconds} for w in spec.leaderboard_windows],
            "scopes": [s.key for s in spec.scopes]}
    if stored is None:
        return {**base, "as_of": None, "period": None, "entries": []}
    as_of, entries, meta = stored

    def values(entry: dict) -> dict:
        if scope is None:
            return {w.name: entry.get(w.name) for w in spec.leaderboard_windows}
        return {w.name: entry.get("scopes", {}).get(scope, {}).get(w.name) for w in spec.leaderboard_windows}

    by_model = {e["model_id"]: e for e in entries}
    order = rank_models({m: values(e)[window] for m, e in by_model.items()}, descending=spec.ranking_descending)
    rows = []
    for rank, model_id in enumerate(order, start=1):
        e = by_model[model_id]
        payout = e.get("payout") or {}
        rows.append({
            "rank": rank, "model_id": model_id, "model_name": e.get("model_name", model_id),
            "cruncher_index": e.get("cruncher_index"), "participant": e.get("participant", model_id),
            "benchmark": bool(e.get("benchmark")), "ensemble": bool(e.get("ensemble")),
            "value": values(e)[window], "windows": values(e),
            "coverage": {w.name: e.get(f"{w.name}_coverage") for w in spec.leaderboard_windows},
            "complete": {w.name: e.get(f"{w.name}_complete") for w in spec.leaderboard_windows},
            "prediction_count": e.get("prediction_count"),
            "payout": {"rank": payout.get("rank"), "score": payout.get("score"), "eligible": payout.get("eligible"),
                       "unpaid_reason": (payout.get("breakdown") or {}).get("unpaid_reason"),
                       "reward_pct": payout.get("reward_pct"),
                       "reward_percent": frac64_to_percent(payout.get("reward_pct") or 0)} if payout else None,
        })
    period = {"start": meta.get("period_start"), "end": meta.get("period_end")}
    return {**base, "as_of": as_of, "period": period, "entries": rows}


def models_global(c: ReportCompetition, stored: tuple | None) -> dict:
    """Each model's combined value per window, as of the newest leaderboard."""
    entries = stored[1] if stored else []
    return {"as_of": stored[0] if stored else None, "models": [
        {"model_id": e["model_id"], "model_name": e.get("model_name"), "rank": e["rank"],
         **{w.name: e.get(w.name) for w in c.spec.leaderboard_windows},
         "coverage": e.get(f"{c.spec.ranking_key}_coverage"), "prediction_count": e.get("prediction_count")}
        for e in entries]}


def models_params(c: ReportCompetition, stored: tuple | None) -> dict:
    """Each model's value per scope (its parameters: subject, horizon, interval, weight) and window."""
    entries = stored[1] if stored else []
    scopes = [{"scope_key": s.key, **s.as_dict(), "weight": s.weight, "name": s.name} for s in c.spec.scopes]
    return {"as_of": stored[0] if stored else None, "scopes": scopes, "models": [
        {"model_id": e["model_id"], "model_name": e.get("model_name"),
         "scopes": {key: {w.name: e.get("scopes", {}).get(key, {}).get(w.name) for w in c.spec.leaderboard_windows}
                    for key in (s.key for s in c.spec.scopes)}}
        for e in entries]}


def model_score_series(c: ReportCompetition, model_ids: Sequence[str] | None, start: datetime | None,
                       end: datetime | None) -> dict:
    """Per model, its value in each hour of [start, end) under the eligibility policy (the same
    standings the leaderboard computes, one hour at a time). No range: the last 72 hours of data."""
    store = c.store
    if start is None or end is None:
        lag = c.reports.lag([s.key for s in c.spec.scopes])
        # the newest data: the last scored cycle (or, with no score row left, the newest leaderboard)
        last = lag.last_scored_cycle or (lag.last_leaderboard_as_of - timedelta(microseconds=1)
                                         if lag.last_leaderboard_as_of else None)
        if last is None:
            return {"start": None, "end": None, "series": {}, "hours_with_cycles": []}
        end = ceil_hour(last + timedelta(microseconds=1))
        start = max(end - timedelta(hours=SERIES_DEFAULT_HOURS), c.spec.start)  # nothing ran before the start
    snapshots = store.snapshots(start, end)
    rollups = store.stored_rollups(start, end)
    by_hour_snapshots, by_hour_rollups = defaultdict(list), defaultdict(list)
    for row in snapshots:
        if model_ids is None or row.model_id in model_ids:
            by_hour_snapshots[row.period_start].append(row)
    for row in rollups:
        by_hour_rollups[row.period_start].append(row)
    series: dict[str, list[dict]] = defaultdict(list)
    for hour in sorted(by_hour_snapshots):
        hourly = standings(by_hour_snapshots[hour], by_hour_rollups[hour], c.spec.scopes, c.spec.eligibility,
                           hour, hour + timedelta(hours=1))
        for model_id, standing in sorted(hourly.items()):
            if standing.value is not None:
                series[model_id].append({"hour": hour, "value": standing.value, "predictions": standing.predictions})
    # the hours in which cycles ran and count: an hour missing here is a gap (nothing ran, or all void)
    counted = sorted({row.period_start for row in rollups if row.cycle_count > 0 and start <= row.period_start < end})
    return {"start": start, "end": end, "series": dict(series), "hours_with_cycles": counted}


def prediction_view(p: PredictionReport, public_input_keys: Sequence[str]) -> dict:
    view = {
        "id": p.id, "model_id": p.model_id, "scope_key": p.scope_key, "cycle_at": p.cycle_at,
        "resolvable_at": p.resolvable_at, "status": p.status, "status_reason": public_reason(p.status, p.status_reason),
        "exec_time_ms": p.exec_time_ms, "inference_output": p.inference_output, "embargoed": p.embargoed,
        "score": None if p.score_value is None and p.score_success is None else
        {"value": p.score_value, "success": p.score_success, "failed_reason": public_score_reason(p.score_failed_reason)},
    }
    if public_input_keys:
        data = p.input_data if isinstance(p.input_data, dict) else {}
        view["input"] = {key: data[key] for key in public_input_keys if key in data}
    return view


def snapshot_view(s: SnapshotReport) -> dict:
    return {"id": s.id, "model_id": s.model_id, "scope_key": s.scope_key, "period_start": s.period_start,
            "period_end": s.period_end, "prediction_count": s.prediction_count, "value": s.value,
            "result_summary": s.result_summary, "status_counts": s.status_counts}


def reward_split(cp: CheckpointRow) -> list[dict]:
    return [{"rank": r["rank"], "model_id": r["model_id"], "cruncher_index": r.get("cruncher_index"),
             "score": r["score"], "eligible": r["eligible"], "coverage": r.get("coverage"),
             "participant": r.get("participant", r["model_id"]), "benchmark": bool((r.get("breakdown") or {}).get("benchmark")),
             "unpaid_reason": (r.get("breakdown") or {}).get("unpaid_reason"),
             "copy_evidence": ((r.get("breakdown") or {}).get("copy_cluster") or {}).get("evidence"),
             "reward_pct": r["reward_pct"], "reward_percent": frac64_to_percent(r["reward_pct"])}
            for r in cp.entries.get("ranking", [])]


def lifecycle_view(cp: CheckpointRow, audit: Sequence[AuditRow]) -> dict:
    """Whether the checkpoint's status is backed by its audit trail and gate result: a checkpoint
    shown past PENDING without them (its status written around crunch.advance_checkpoint) is
    flagged here, with every reason."""
    problems = lifecycle_problems(cp, audit)
    return {"verified": not problems, "problems": problems}


def skip_view(audit: Sequence[AuditRow]) -> dict | None:
    """The operator's skip of the checkpoint, from its audit row: the reason, who, when."""
    row = next((a for a in audit if a.to_status == CheckpointStatus.SKIPPED), None)
    return None if row is None else {"reason": row.note, "actor": row.actor, "at": row.at, "audit_id": row.id}


def unpayable_view(cp: CheckpointRow, spec: CompetitionSpec) -> dict | None:
    """For a PENDING checkpoint whose entries the declared policies can never pay: why, what it
    blocks, and the operator's way out. None when nothing in its entries says so."""
    reasons = unpayable_reasons(cp.entries, spec.gate) if cp.status == CheckpointStatus.PENDING else []
    if not reasons:
        return None
    return {"reasons": reasons,
            "blocks": "it can never be submitted, and every later period waits for it (submissions go in order)",
            "remedy": f"an operator skips it, with the reason: PATCH /competitions/{spec.slug}/checkpoints/{cp.id}/status "
                      '{"status": "SKIPPED", "note": "<why>"}, or crunch-dagster checkpoints skip '
                      f"{spec.slug} {cp.id} --reason '<why>'. It then pays nothing, ever; no later period pays it"}


def checkpoint_summary(cp: CheckpointRow, audit: Sequence[AuditRow] | None = None,
                       spec: CompetitionSpec | None = None) -> dict:
    """One checkpoint with its reward split and the rules fingerprint it was built under; with its
    `audit`, its `lifecycle` and `skipped` (the skip's reason, actor and time, or None); with the
    `spec`, `unpayable` (why a PENDING one can never be submitted, or None)."""
    rules = cp.entries.get("rules") or {}
    summary = {"id": cp.id, "period_start": cp.period_start, "period_end": cp.period_end, "status": cp.status,
               "tx_hash": cp.tx_hash, "submitted_at": cp.submitted_at, "merkle_root": cp.merkle_root,
               "chained_root": cp.chained_root, "commitment_scheme": cp.commitment_scheme, "created_at": cp.created_at,
               "updated_at": cp.updated_at, "rules_fingerprint": rules.get("fingerprint"),
               "rules_mixed": bool(rules.get("mixed")), "reward_split": reward_split(cp)}
    if audit is not None:
        summary["lifecycle"] = lifecycle_view(cp, audit)
        summary["skipped"] = skip_view(audit) if cp.status == CheckpointStatus.SKIPPED else None
    if spec is not None:
        summary["unpayable"] = unpayable_view(cp, spec)
    return summary


def checkpoint_view(cp: CheckpointRow, gate: dict | None, audit: list[AuditRow],
                    disputes: list[DisputeRow] | None = None, spec: CompetitionSpec | None = None) -> dict:
    return {**checkpoint_summary(cp, audit, spec), "crunch": cp.entries.get("crunch"),
            "cruncher_rewards": cp.entries.get("cruncher_rewards", []),
            "compute_provider_rewards": cp.entries.get("compute_provider_rewards", []),
            "data_provider_rewards": cp.entries.get("data_provider_rewards", []),
            "policies": cp.entries.get("policies", {}), "copy_clusters": cp.entries.get("copy_clusters", []),
            "rules": cp.entries.get("rules"), "meta": cp.meta, "gate": gate,
            "audit": [vars(a) for a in audit], "disputes": [vars(d) for d in disputes or []]}


def lag_view(c: ReportCompetition, lag: LagReport, now: datetime) -> dict:
    def figure(at: datetime | None) -> dict:
        return {"at": at, "behind_seconds": None if at is None else round((now - at).total_seconds(), 3)}

    return {"now": now, "last_cycle": {key: figure(at) for key, at in lag.last_cycle_by_scope.items()},
            "last_scored_cycle": figure(lag.last_scored_cycle),
            "last_leaderboard": figure(lag.last_leaderboard_as_of),
            "last_checkpoint_end": figure(lag.last_checkpoint_end)}


def report_schema(spec: CompetitionSpec) -> dict:
    """The leaderboard's columns and the metric widgets a UI can draw, from the spec."""
    direction = "higher is better" if spec.ranking_descending else "lower is better"
    columns = [{"key": "rank", "label": "Rank", "type": "int"},
               {"key": "model_name", "label": "Model", "type": "string"}]
    for w in spec.leaderboard_windows:
        columns.append({"key": w.name, "label": f"{w.name} ({w.seconds // 3600} h)", "type": "float",
                        "format": "score", "direction": direction, "ranking": w.name == spec.ranking_key})
        columns.append({"key": f"{w.name}_coverage", "label": f"coverage {w.seconds // 3600} h", "type": "float",
                        "format": "percent"})
    columns += [{"key": "prediction_count", "label": "Predictions", "type": "int"},
                {"key": "payout.reward_percent", "label": "Projected reward %", "type": "float", "format": "percent"}]
    widgets = [
        {"id": "score_over_time", "type": "line", "label": "Score per hour", "source": "models/{model_id}/scores",
         "x": "hour", "y": "value"},
        {"id": "reward_split", "type": "bar", "label": "Reward split of the latest checkpoint",
         "source": "emissions/latest", "x": "cruncher_index", "y": "reward_pct"},
        {"id": "coverage", "type": "bar", "label": f"Coverage over {spec.ranking_key}", "source": "leaderboard",
         "x": "model_name", "y": f"{spec.ranking_key}_coverage"},
    ]
    return {"slug": spec.slug, "ranking_key": spec.ranking_key, "ranking_descending": spec.ranking_descending,
            "leaderboard_columns": columns, "metrics_widgets": widgets}
