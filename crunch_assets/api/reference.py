"""The reference's shapes: what CrunchDAO's coordinator webapp (crunchdao/coordinator-webapp) and
its starter app read from a coordinator node, served on `/reports/...` (the default competition)
and `/competitions/{slug}/reports/...`, plus `/info`. Our own shapes stay on `/competitions/{slug}/...`.

The TypeScript types they are checked against are quoted in docs/api.md and kept in
tests/api/reference/webapp-types.ts; tests/api/test_reference_contract.py validates these
responses against the JSON Schema generated from them and settles a checkpoint the way the
webapp does (`entries[0]` and `meta.ranking[cruncher_index]`).

No `from __future__ import annotations`: FastAPI must see the real annotations of the routes.
"""

from datetime import datetime, timedelta, timezone
from typing import Annotated, Callable, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query

from crunch_assets import payouts
from crunch_assets.api.bodies import ConfirmBody, Ident, StatusBody, UtcInstant, advance_over_http
from crunch_assets.api.competitions import ReportCompetition
from crunch_assets.api.views import score_words, window_label
from crunch_assets.failure_reasons import public_score_reason
from crunch_assets.spec import CompetitionSpec
from resources import clock
from resources.model_ids import is_virtual_model_id
from resources.store.rows import CheckpointRow, ModelRow
from resources.store.lifecycles import CheckpointStatus, PredictionReportStatus

SCHEMA_VERSION = "1"
CHECKPOINT_LIMIT_MAX = 200
PREDICTION_ROWS_MAX = 1000
SERIES_ROWS_MAX = 10_000
SPAN_MAX_DAYS = 31
DEFAULT_SPAN_DAYS = 7  # the reference's default range of the chart endpoints
FEED_TAIL_MAX = 200
PROJECT_IDS_MAX = 200
ID_MAX = 2**63 - 1


def _naive_utc(at: datetime | None) -> str | None:
    """A chart's x value as the reference sends it: UTC without an offset. The webapp's line chart
    appends "Z" before parsing, so "...+00:00" or "...Z" would become an invalid date."""
    if at is None:
        return None
    return at.astimezone(timezone.utc).replace(tzinfo=None).isoformat()


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(timezone.utc).isoformat()


def _ranking_window_seconds(spec: CompetitionSpec) -> int:
    return next(w.seconds for w in spec.leaderboard_windows if w.name == spec.ranking_key)


def _direction(spec: CompetitionSpec) -> str:
    return "desc" if spec.ranking_descending else "asc"


# --- checkpoints ---------------------------------------------------------------------------------

def ranking_by_cruncher(cp: CheckpointRow, models: list[ModelRow]) -> list[dict]:
    """`meta.ranking` as the webapp reads it: `ranking[reward.cruncher_index]` is the model paid
    for that cruncher. Our cruncher indexes are the registry's (stable per cruncher, not the
    rank), so the list is ordered by cruncher index: slot i holds cruncher i's best-ranked model
    of the checkpoint, or, for a cruncher the checkpoint did not rank, its registry model with
    rank 0 ("not ranked"), so that every slot stays aligned."""
    ranked = cp.entries.get("ranking", [])
    registry = {m.model_id: m for m in models}
    slots: dict[int, dict] = {}
    for row in ranked:  # best rank first: the first model seen for a cruncher is its best
        index = row.get("cruncher_index")
        if index is None or index in slots:
            continue
        slots[index] = _ranked_entry(row["model_id"], row["rank"], row, registry.get(row["model_id"]))
    for model in models:
        if model.cruncher_index is not None and model.cruncher_index not in slots:
            slots[model.cruncher_index] = _ranked_entry(model.model_id, 0, None, model)
    size = max(slots, default=-1) + 1
    return [slots.get(i, {"model_id": "", "rank": 0, "cruncher_index": i}) for i in range(size)]


def _ranked_entry(model_id: str, rank: int, row: dict | None, model: ModelRow | None) -> dict:
    entry = {"model_id": model_id, "model_name": model.name if model else model_id,
             "cruncher_name": _cruncher_name(model, model_id), "rank": rank,
             "cruncher_index": row.get("cruncher_index") if row else (model.cruncher_index if model else None)}
    if row is not None:
        entry["prediction_count"] = row.get("prediction_count", 0)
        entry["result_summary"] = {key: value for key, value in (
            ("score", row.get("score")), ("coverage", row.get("coverage")),
            ("reward_percent", payouts.frac64_to_percent(row.get("reward_pct") or 0)),
        ) if isinstance(value, (int, float)) and not isinstance(value, bool)}
        entry["eligible"] = row.get("eligible")
    return entry


def _cruncher_name(model: ModelRow | None, fallback: str) -> str:
    if model is None:
        return fallback
    return model.player_name or model.player_id or model.name or model.model_id


def node_checkpoint(cp: CheckpointRow, models: list[ModelRow]) -> dict:
    """A checkpoint as NodeCheckpoint (nodeTypes.ts): the emission is `entries[0]`."""
    emission = payouts.emission_of(cp)
    emission = {**emission, "crunch": emission["crunch"] or ""}  # a string on chain; the gate refuses it empty
    return {
        "id": str(cp.id),
        "period_start": _iso(cp.period_start),
        "period_end": _iso(cp.period_end),
        "status": cp.status,
        "entries": [emission],
        "meta": {
            "model_count": len(cp.entries.get("ranking", [])),
            "ranking": ranking_by_cruncher(cp, models),
            "merkle_root": cp.merkle_root,
            "chained_root": cp.chained_root,
            "leaf_count": cp.meta.get("leaf_count"),
            "previous_checkpoint_id": cp.meta.get("previous_checkpoint_id"),
        },
        "created_at": _iso(cp.created_at),
        "tx_hash": cp.tx_hash,
        "submitted_at": _iso(cp.submitted_at),
    }


def cli_format(cp: CheckpointRow, models: list[ModelRow]) -> dict:
    """The reference's coordinator-cli file: percentages (0-100) keyed by the model the cruncher
    index stands for (the operator maps it to a wallet), and by provider."""
    ranking = ranking_by_cruncher(cp, models)
    emission = payouts.emission_of(cp)

    def percent(reward_pct: int) -> float:
        return round(reward_pct / payouts.FRAC64_ONE * 100.0, 6)

    return {
        "crunch": emission["crunch"] or "",
        "crunchEmission": {
            (ranking[r["cruncher_index"]]["model_id"] if r["cruncher_index"] < len(ranking) else str(r["cruncher_index"])):
                percent(r["reward_pct"]) for r in emission["cruncher_rewards"]},
        "computeProvider": {r["provider"]: percent(r["reward_pct"]) for r in emission["compute_provider_rewards"]},
        "dataProvider": {r["provider"]: percent(r["reward_pct"]) for r in emission["data_provider_rewards"]},
    }


# --- leaderboard and models ----------------------------------------------------------------------

def leaderboard_rows(spec: CompetitionSpec, stored: tuple | None, models: list[ModelRow]) -> list[dict]:
    """LeaderboardPosition[]: one flat row per model, best first, keyed as the schema's columns."""
    if stored is None:
        return []
    as_of, entries, _meta = stored
    registry = {m.model_id: m for m in models}
    windows = [w.name for w in spec.leaderboard_windows]
    rows = []
    for e in sorted(entries, key=lambda entry: entry["rank"]):
        model = registry.get(e["model_id"])
        metrics = {name: e.get(name) for name in windows}
        payout = e.get("payout") or {}
        rows.append({
            "created_at": _iso(as_of),
            "model_id": e["model_id"],
            "model_name": e.get("model_name", e["model_id"]),
            "cruncher_name": _cruncher_name(model, e["model_id"]),
            "cruncher_id": (model.player_id if model else None) or e["model_id"],
            "rank": e["rank"],
            "status": model.state if model else "UNKNOWN",
            "score_metrics": metrics,
            "score_ranking": {"key": spec.ranking_key, "value": e.get(spec.ranking_key), "direction": _direction(spec)},
            **metrics,
            **{f"{name}_coverage": e.get(f"{name}_coverage") for name in windows},
            "prediction_count": e.get("prediction_count", 0),
            "eligible": payout.get("eligible"),
            "projected_reward_percent": payouts.frac64_to_percent(payout.get("reward_pct") or 0) if payout else 0.0,
        })
    return rows


def model_rows(models: list[ModelRow]) -> list[dict]:
    """GetModelsResponse / MetricsModelItem[]."""
    return [{"model_id": m.model_id, "model_name": m.name, "cruncher_name": _cruncher_name(m, m.model_id),
             "cruncher_id": m.player_id or m.model_id, "deployment_id": m.deployment_identifier or "",
             "status": m.state, "cruncher_index": m.cruncher_index} for m in models]


def _scope_fields(spec: CompetitionSpec, scope_key: str) -> dict:
    scope = spec.scope(scope_key)
    if scope is None:  # a scope no longer declared: its key says subject-horizon-interval
        subject, _, rest = scope_key.partition("-")
        return {"scope_key": scope_key, "scope": {}, "param": scope_key, "subject": subject, "asset": subject}
    return {"scope_key": scope_key, "scope": scope.as_dict(), "param": scope_key, "subject": scope.subject,
            "asset": scope.subject, "horizon": scope.resolve_horizon_seconds, "step": scope.effective_step_seconds}


def global_rows(spec: CompetitionSpec, leaderboards, model_ids: set[str] | None) -> list[dict]:
    """Each model's window values at each stored leaderboard: x = performed_at (its as_of)."""
    windows = [w.name for w in spec.leaderboard_windows]
    rows = []
    for board in leaderboards:
        for e in board.entries:
            if model_ids is not None and e["model_id"] not in model_ids:
                continue
            metrics = {name: e.get(name) for name in windows}
            rows.append({"model_id": e["model_id"], "model_name": e.get("model_name", e["model_id"]), "rank": e["rank"],
                         "score_metrics": metrics,
                         "score_ranking": {"key": spec.ranking_key, "value": e.get(spec.ranking_key),
                                           "direction": _direction(spec)},
                         **metrics, "performed_at": _naive_utc(board.as_of)})
    return rows


def params_rows(spec: CompetitionSpec, leaderboards, model_ids: set[str] | None) -> list[dict]:
    """Each model's window values per scope at each stored leaderboard."""
    windows = [w.name for w in spec.leaderboard_windows]
    rows = []
    for board in leaderboards:
        for e in board.entries:
            if model_ids is not None and e["model_id"] not in model_ids:
                continue
            for scope_key, values in sorted((e.get("scopes") or {}).items()):
                metrics = {name: values.get(name) for name in windows}
                rows.append({"model_id": e["model_id"], **_scope_fields(spec, scope_key), "score_metrics": metrics,
                             **metrics, "performed_at": _naive_utc(board.as_of)})
    return rows


# --- the schema a UI draws from ------------------------------------------------------------------

def report_schema(spec: CompetitionSpec) -> dict:
    """{schema_version, leaderboard_columns: LeaderboardColumn[], metrics_widgets: Widget[]}."""
    words = score_words(spec)
    columns = [
        {"id": 1, "type": "USERNAME", "property": "cruncher_name", "format": None, "displayName": "Cruncher",
         "tooltip": None, "nativeConfiguration": None, "order": 0},
        {"id": 2, "type": "PROJECT", "property": "model_id", "format": None, "displayName": "Model", "tooltip": None,
         "nativeConfiguration": {"type": "model", "statusProperty": "status"}, "order": 5},
    ]
    next_id = 3
    for index, w in enumerate(spec.leaderboard_windows):
        label = window_label(w.seconds)
        columns.append({"id": next_id, "type": "VALUE", "property": w.name, "format": "decimal-4",
                        "displayName": label[0].upper() + label[1:] + (" (ranks)" if w.name == spec.ranking_key else ""),
                        "tooltip": f"{words}; over the {label}", "nativeConfiguration": None, "order": (index + 1) * 10})
        next_id += 1
    columns.append({"id": next_id, "type": "VALUE", "property": f"{spec.ranking_key}_coverage", "format": "percentage",
                    "displayName": "Coverage", "tooltip": "the share of the counted cycles the model was scored in, "
                    f"over the {window_label(_ranking_window_seconds(spec))}",
                    "nativeConfiguration": None, "order": 100})
    columns.append({"id": next_id + 1, "type": "VALUE", "property": "projected_reward_percent", "format": "decimal-2",
                    "displayName": "Projected reward %", "tooltip": "the share the checkpoint period in progress "
                    "would pay as it stands", "nativeConfiguration": None, "order": 110})
    series = [{"name": w.name, "label": window_label(w.seconds)} for w in spec.leaderboard_windows]
    subject_filters = [{"type": "select", "label": "Subject", "property": "subject", "autoSelectFirst": True},
                       {"type": "select", "label": "Horizon", "property": "horizon", "autoSelectFirst": True}]
    widgets = [
        {"id": 1, "type": "CHART", "displayName": "Score metrics", "tooltip": words, "order": 10,
         "endpointUrl": "/reports/models/global",
         "nativeConfiguration": {"type": "line", "xAxis": {"name": "performed_at"},
                                 "yAxis": {"series": series, "format": "decimal-4"}, "displayEvolution": False}},
        {"id": 2, "type": "CHART", "displayName": "Rolling score by parameters", "tooltip": words, "order": 20,
         "endpointUrl": "/reports/models/params",
         "nativeConfiguration": {"type": "line", "xAxis": {"name": "performed_at"},
                                 "yAxis": {"series": series, "format": "decimal-4"}, "filterConfig": subject_filters,
                                 "groupByProperty": "param", "displayEvolution": False}},
        {"id": 3, "type": "CHART", "displayName": "Predictions", "tooltip": words, "order": 30,
         "endpointUrl": "/reports/predictions",
         "nativeConfiguration": {"type": "line", "xAxis": {"name": "performed_at"},
                                 "yAxis": {"series": [{"name": "score_value", "label": "score"}], "format": "decimal-4"},
                                 "alertConfig": {"reasonField": "score_failed_reason", "field": "score_success"},
                                 "filterConfig": subject_filters, "groupByProperty": "param",
                                 "displayEvolution": False}},
    ]
    return {"schema_version": SCHEMA_VERSION, "leaderboard_columns": columns, "metrics_widgets": widgets}


def info(c: ReportCompetition) -> dict:
    """The node's identity, as the reference's /info: the crunch account and its network."""
    return {"crunch_id": c.slug, "crunch_address": c.accounts.crunch_pubkey, "network": c.network}


# --- the router ----------------------------------------------------------------------------------

def _project_ids(raw: list[str] | None) -> set[str] | None:
    """The reference's `projectIds`: repeated, or comma-separated; none: every model."""
    if not raw:
        return None
    ids = {part.strip() for item in raw for part in item.split(",") if part.strip()}
    if len(ids) > PROJECT_IDS_MAX:
        raise HTTPException(422, f"projectIds: at most {PROJECT_IDS_MAX} models")
    return ids or None


def _range(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    end = end or clock.now()
    start = start or end - timedelta(days=DEFAULT_SPAN_DAYS)
    if end <= start:
        raise HTTPException(422, "end must be after start")
    if end - start > timedelta(days=SPAN_MAX_DAYS):
        raise HTTPException(422, f"give start and end at most {SPAN_MAX_DAYS} days apart")
    return start, end


Instant = Annotated[UtcInstant | None, Query()]
CheckpointId = Annotated[int, Path(ge=1, le=ID_MAX, description="checkpoint id", examples=[1])]
ProjectIds = Annotated[list[Annotated[str, Query(max_length=10_000)]] | None,
                       Query(alias="projectIds", description="model ids, repeated or comma-separated")]


def checkpoint_or_404(c: ReportCompetition, checkpoint_id: int) -> CheckpointRow:
    cp = c.store.checkpoint_by_id(checkpoint_id)
    if cp is None:
        raise HTTPException(404, f"no checkpoint {checkpoint_id} in {c.slug}")
    return cp


def build_reference_router(competition_dependency: Callable[..., ReportCompetition],
                           operator: Callable[..., str]) -> APIRouter:
    """The reference's read and lifecycle paths (to be mounted on a `/reports` prefix)."""
    router = APIRouter(tags=["reference (coordinator webapp)"])
    Competition = Annotated[ReportCompetition, Depends(competition_dependency)]
    Operator = Annotated[str, Depends(operator)]
    _add_model_and_record_routes(router, Competition)
    _add_checkpoint_routes(router, Competition)
    _add_schema_routes(router, Competition)
    _add_lifecycle_routes(router, Competition, Operator)
    return router


def _add_model_and_record_routes(router: APIRouter, Competition) -> None:
    """The leaderboard, the registry, the window series, predictions (scores only), feeds, snapshots."""

    @router.get("/leaderboard")
    def leaderboard(c: Competition, include_ensembles: Annotated[bool, Query()] = False) -> list[dict]:
        """LeaderboardPosition[]: the newest leaderboard, best first, one flat row per model. As the
        reference, the ensembles (virtual models, never paid) only with include_ensembles=true; the
        other rows keep their stored rank."""
        rows = leaderboard_rows(c.spec, c.store.leaderboard(), c.store.models())
        return rows if include_ensembles else [r for r in rows if not is_virtual_model_id(r["model_id"])]

    @router.get("/models")
    def models(c: Competition) -> list[dict]:
        """The model registry as GetModelsResponse (model_id, model_name, cruncher_name, cruncher_id, deployment_id)."""
        return model_rows(c.store.models())

    def series(c: ReportCompetition, project_ids, start, end, build) -> list[dict]:
        start, end = _range(start, end)
        boards = c.reports.leaderboards(start, end, limit=SPAN_MAX_DAYS * 24 * 4)
        rows = build(c.spec, boards, _project_ids(project_ids))
        if len(rows) > SERIES_ROWS_MAX:
            raise HTTPException(422, f"{len(rows)} rows: more than {SERIES_ROWS_MAX}; narrow start..end or projectIds")
        return rows

    @router.get("/models/global")
    def models_global(c: Competition, project_ids: ProjectIds = None, start: Instant = None,
                      end: Instant = None) -> list[dict]:
        """Each model's window values at each stored leaderboard in [start, end) (default: the last 7 days)."""
        return series(c, project_ids, start, end, global_rows)

    @router.get("/models/params")
    def models_params(c: Competition, project_ids: ProjectIds = None, start: Instant = None,
                      end: Instant = None) -> list[dict]:
        """Each model's window values per scope (param = scope key) at each stored leaderboard."""
        return series(c, project_ids, start, end, params_rows)

    @router.get("/predictions")
    def predictions(c: Competition, project_ids: ProjectIds = None, start: Instant = None, end: Instant = None,
                    limit: Annotated[int, Query(ge=1, le=PREDICTION_ROWS_MAX)] = PREDICTION_ROWS_MAX) -> list[dict]:
        """The newest `limit` predictions in [start, end) (default: the last 7 days), oldest first, with
        their score. No output: only scores, which exist once a cycle is resolved."""
        start, end = _range(start, end)
        ids = _project_ids(project_ids)
        page = c.reports.predictions(model_ids=sorted(ids) if ids else None, start=start, end=end, descending=True,
                                     limit=limit)
        rows = []
        for p in reversed(page):
            scored = p.score_success is not None
            rows.append({
                "model_id": p.model_id, **_scope_fields(c.spec, p.scope_key), "status": p.status,
                "score_value": p.score_value, "score_success": bool(p.score_success),
                "score_failed": (not p.score_success) if scored else True,
                "score_failed_reason": public_score_reason(p.score_failed_reason) if scored else
                ("void: not scored" if p.status == PredictionReportStatus.VOIDED else "Prediction not scored"),
                "performed_at": _naive_utc(p.cycle_at), "resolvable_at": _naive_utc(p.resolvable_at),
            })
        return rows

    @router.get("/feeds")
    def feeds(c: Competition) -> list[dict]:
        """FeedSummary[]: the feed streams the competition reads."""
        return [{"source": f.source, "subject": f.subject, "kind": f.kind, "granularity": f.granularity,
                 "record_count": f.record_count, "oldest_ts": _iso(f.first_event), "newest_ts": _iso(f.last_event),
                 "watermark_ts": _iso(f.watermark), "watermark_updated_at": _iso(f.watermark_updated_at),
                 "retention_days": f.retention_days} for f in c.reports.feeds()]

    @router.get("/feeds/tail")
    def feeds_tail(c: Competition, source: Annotated[Ident | None, Query()] = None,
                   subject: Annotated[Ident | None, Query()] = None, kind: Annotated[Ident | None, Query()] = None,
                   granularity: Annotated[Ident | None, Query()] = None,
                   limit: Annotated[int, Query(ge=1, le=FEED_TAIL_MAX)] = 20) -> list[dict]:
        """FeedTailRecord[]: the newest records of the competition's feed streams, newest first."""
        return [{"source": r.source, "subject": r.subject, "kind": r.kind, "granularity": r.granularity,
                 "ts_event": _iso(r.ts_event), "ts_ingested": _iso(r.ts_ingested), "values": r.values, "meta": r.meta}
                for r in c.reports.feed_tail(source=source, subject=subject, kind=kind, granularity=granularity,
                                             limit=limit)]

    @router.get("/snapshots")
    def snapshots(c: Competition, model_id: Annotated[Ident | None, Query()] = None, since: Instant = None,
                  until: Instant = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict]:
        """Hourly snapshots in [since, until), oldest first."""
        if since is not None and until is not None and until <= since:
            raise HTTPException(422, "until must be after since")
        return [{"id": s.id, "model_id": s.model_id, "scope_key": s.scope_key, "period_start": _iso(s.period_start),
                 "period_end": _iso(s.period_end), "prediction_count": s.prediction_count, "value": s.value,
                 "result_summary": s.result_summary}
                for s in c.reports.snapshots(model_id=model_id, start=since, end=until, limit=limit)]


def _add_checkpoint_routes(router: APIRouter, Competition) -> None:
    """Checkpoints and emissions in the reference's shapes (NodeCheckpoint, NodeEmission, the CLI file)."""

    @router.get("/checkpoints")
    def checkpoints(c: Competition,
                    status: Annotated[Literal["PENDING", "SUBMITTED", "CLAIMABLE", "PAID"] | None, Query()] = None,
                    limit: Annotated[int, Query(ge=1, le=CHECKPOINT_LIMIT_MAX)] = 20) -> list[dict]:
        """NodeCheckpoint[]: the newest checkpoints first."""
        models = c.store.models()
        return [node_checkpoint(cp, models) for cp in c.reports.checkpoints(status=status, limit=limit)]

    @router.get("/checkpoints/latest")
    def latest_checkpoint(c: Competition) -> dict:
        cp = c.reports.latest_checkpoint()
        if cp is None:
            raise HTTPException(404, f"{c.slug} has no checkpoint yet")
        return node_checkpoint(cp, c.store.models())

    @router.get("/checkpoints/{checkpoint_id}")
    def checkpoint(c: Competition, checkpoint_id: CheckpointId) -> dict:
        """NodeCheckpoint: the emission is entries[0]; meta.ranking[cruncher_index] is the model paid."""
        return node_checkpoint(checkpoint_or_404(c, checkpoint_id), c.store.models())

    @router.get("/checkpoints/{checkpoint_id}/payload")
    def checkpoint_payload(c: Competition, checkpoint_id: CheckpointId) -> dict:
        cp = checkpoint_or_404(c, checkpoint_id)
        return {"checkpoint_id": str(cp.id), "period_start": _iso(cp.period_start), "period_end": _iso(cp.period_end),
                "entries": node_checkpoint(cp, [])["entries"]}

    @router.get("/checkpoints/{checkpoint_id}/emission")
    def emission(c: Competition, checkpoint_id: CheckpointId) -> dict:
        """NodeEmission: the on-chain shape (frac64)."""
        return node_checkpoint(checkpoint_or_404(c, checkpoint_id), [])["entries"][0]

    @router.get("/checkpoints/{checkpoint_id}/emission/cli-format")
    def emission_cli(c: Competition, checkpoint_id: CheckpointId) -> dict:
        """The reference's coordinator-cli file: {crunch, crunchEmission, computeProvider, dataProvider} in %."""
        return cli_format(checkpoint_or_404(c, checkpoint_id), c.store.models())

    @router.get("/emissions/latest")
    def latest_emission(c: Competition) -> dict:
        cp = c.reports.latest_checkpoint()
        if cp is None:
            raise HTTPException(404, f"{c.slug} has no checkpoint yet")
        return {"checkpoint_id": str(cp.id), "status": cp.status, "period_start": _iso(cp.period_start),
                "period_end": _iso(cp.period_end), "emission": node_checkpoint(cp, [])["entries"][0]}


def _add_schema_routes(router: APIRouter, Competition) -> None:
    """The report schema the webapp renders from."""

    @router.get("/schema")
    def schema(c: Competition) -> dict:
        """{schema_version, leaderboard_columns: LeaderboardColumn[], metrics_widgets: Widget[]}."""
        return report_schema(c.spec)

    @router.get("/schema/leaderboard-columns")
    def schema_columns(c: Competition) -> list[dict]:
        return report_schema(c.spec)["leaderboard_columns"]

    @router.get("/schema/metrics-widgets")
    def schema_widgets(c: Competition) -> list[dict]:
        return report_schema(c.spec)["metrics_widgets"]


def _add_lifecycle_routes(router: APIRouter, Competition, Operator) -> None:
    """The lifecycle behind the token: confirm and advance, through the same gate as every router."""

    def transition(c: ReportCompetition, checkpoint_id: int, to_status: str, actor: str, tx_hash: str | None,
                   note: str | None) -> dict:
        outcome = advance_over_http(c, checkpoint_id, to_status, actor, tx_hash, note)
        return node_checkpoint(outcome.checkpoint, c.store.models())

    conflict = {409: {"description": "illegal transition, or the safety gate refused"},
                401: {"description": "no bearer token"}, 403: {"description": "wrong token, or mutations disabled"},
                404: {"description": "unknown checkpoint"}}

    @router.post("/checkpoints/{checkpoint_id}/confirm", responses=conflict)
    def confirm(c: Competition, actor: Operator, checkpoint_id: CheckpointId, body: Annotated[ConfirmBody, Body()]) -> dict:
        """PENDING -> SUBMITTED with the transaction hash, after the safety gate; the checkpoint as NodeCheckpoint."""
        return transition(c, checkpoint_id, CheckpointStatus.SUBMITTED, actor, body.tx_hash, body.note)

    @router.patch("/checkpoints/{checkpoint_id}/status", responses=conflict)
    def advance_status(c: Competition, actor: Operator, checkpoint_id: CheckpointId,
                       body: Annotated[StatusBody, Body()]) -> dict:
        """One step forward (SUBMITTED needs tx_hash; gated); the checkpoint as NodeCheckpoint."""
        return transition(c, checkpoint_id, body.status, actor, body.tx_hash, body.note)
