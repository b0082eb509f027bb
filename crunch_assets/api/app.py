"""The report API (FastAPI): leaderboards, models, predictions, feeds, snapshots, checkpoints and
their emissions for one or several competitions, the checkpoint lifecycle behind a bearer token,
exports, health and lag, and the participant page (crunch_assets/api/page.py).

Paths: `/competitions/{slug}/...` for every served competition, and the reference's
`/reports/...` for the deployment's default one. OpenAPI at /docs. Mutations need
`Authorization: Bearer <CRUNCH_API_TOKEN>`; with no token configured they are disabled (403) and
reads stay open. Open reads never show the content of a prediction whose cycle is not resolved
(the embargo: resources/store/reports.py); the same token unlocks it on reads. The actor recorded
in the audit for an API transition is CRUNCH_API_ACTOR.
Body limits and security headers: crunch_assets/api/hardening.py; the server: crunch_assets/api/server.py.

No `from __future__ import annotations` here: FastAPI must see the real annotations of the route
functions, which use aliases local to build_router.
"""


import base64
import binascii
import hmac
import json
import os
import pathlib
import tempfile
import threading
from datetime import datetime, timedelta
from typing import Annotated, Callable, Literal, Sequence

from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field

from crunch_assets import payouts
from crunch_assets.api import exports
from crunch_assets.api.bodies import (
    ConfirmBody, DisputeBody, Ident, ResolveCopyBody, ResolveDisputeBody, ShadowBody, StatusBody, UtcInstant,
    _utc_instant, advance_over_http,
)
from crunch_assets.api.competitions import ReportCompetition
from crunch_assets.api.contribution_views import add_contribution_routes
from crunch_assets.api.hardening import HardenedAPI, docs_routes, validation_error
from crunch_assets.api.views import (
    checkpoint_summary, checkpoint_view, lag_view, leaderboard_view, lifecycle_view, model_score_series, models_global,
    models_params, prediction_view, report_schema, snapshot_view,
)
from crunch_assets.fingerprint import ENGINE_VERSION, FINGERPRINT_SCHEME, digest
from crunch_assets.receipts import ReceiptUnavailable, build_receipt
from crunch_assets.verification import inclusion_proof
from crunch_assets.whatif import ShadowLimitExceeded, ShadowLimits, ShadowRefused
from crunch_assets.whatif import shadow as run_shadow
from resources import clock
from resources.model_ids import MODEL_ID_PATTERN, MODEL_ID_RULE
from resources.store import json_codec
from resources.store.reports import PREDICTION_STATUSES
from resources.store.lifecycles import CheckpointStatus

API_TOKEN_ENV = "CRUNCH_API_TOKEN"
API_ACTOR_ENV = "CRUNCH_API_ACTOR"
DEFAULT_API_ACTOR = "api"
PAGE_LIMIT_DEFAULT = 100
PAGE_LIMIT_MAX = 1000
CHECKPOINT_LIMIT_MAX = 200
EXPORT_MAX_DAYS = 31
SERIES_MAX_DAYS = 31
ID_MAX = 2**63 - 1
# The shadow entry (POST P/shadow): off unless the operator enables it; its limits.
SHADOW_ENV = "CRUNCH_API_SHADOW"
SHADOW_MAX_HOURS_ENV = "CRUNCH_API_SHADOW_MAX_HOURS"
SHADOW_MAX_SECONDS_ENV = "CRUNCH_API_SHADOW_MAX_SECONDS"
SHADOW_BODY_MAX_BYTES = 1024 * 1024  # room for the source fully \u-escaped in JSON (6 bytes a character)
CheckpointId = Annotated[int, Path(ge=1, le=ID_MAX, description="checkpoint id", examples=[1])]
ModelId = Annotated[str, Path(pattern=MODEL_ID_PATTERN, description=f"model id: {MODEL_ID_RULE}", examples=["mean_reversion"])]
ModelIdFilter = Annotated[str, Field(pattern=MODEL_ID_PATTERN, description=f"model id: {MODEL_ID_RULE}")]
# A receipt hashes every leaf of its period (seconds of CPU for a day of 100 models): one is built at
# a time per process, whatever the path or app, so the other core keeps serving; a request waits at
# most RECEIPT_WAIT_SECONDS for its turn (then 503).
RECEIPT_CONCURRENCY = 1
RECEIPT_WAIT_SECONDS = 30.0
_receipt_slots = threading.BoundedSemaphore(RECEIPT_CONCURRENCY)




def encode_cursor(cycle_at: datetime, row_id: int) -> str:
    raw = json.dumps({"t": cycle_at.isoformat(), "i": row_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[datetime, int] | None:
    if cursor is None:
        return None
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        instant = _utc_instant(datetime.fromisoformat(raw["t"]))
        row_id = raw["i"]
        if type(row_id) is not int or not 0 <= row_id <= ID_MAX:  # not a float (1e400 is inf), nor a bool
            raise ValueError("id out of range")
        return instant, row_id
    except (ValueError, KeyError, TypeError, OverflowError, binascii.Error, json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPException(422, "cursor is not one this API returned (use next_cursor as given)") from None


def _span(start: datetime | None, end: datetime | None, max_days: int | None = None) -> None:
    if start is not None and end is not None and end <= start:
        raise HTTPException(422, "end must be after start")
    if max_days is not None and (start is None or end is None or end - start > timedelta(days=max_days)):
        raise HTTPException(422, f"give start and end at most {max_days} days apart")


def shadow_limits_from_env(environ=None) -> ShadowLimits | None:
    """$CRUNCH_API_SHADOW (on/off, default off) and its limits, refused by name when wrong."""
    from crunch_assets.settings import SettingsError, parse_bool

    environ = os.environ if environ is None else environ
    if not parse_bool(SHADOW_ENV, environ.get(SHADOW_ENV, "off")):
        return None
    limits = {}
    for name, field_name, kind in ((SHADOW_MAX_HOURS_ENV, "max_hours", int),
                                   (SHADOW_MAX_SECONDS_ENV, "max_runtime_seconds", float)):
        if name in environ:
            try:
                value = kind(environ[name])
            except ValueError:
                raise SettingsError(f"{name}={environ[name]!r}: expected a number") from None
            if not value > 0:
                raise SettingsError(f"{name}={environ[name]!r}: must be > 0")
            limits[field_name] = value
    return ShadowLimits(**limits)


def create_app(
    competitions: Sequence[ReportCompetition],
    *,
    default_slug: str | None = None,
    api_token: str | None = None,
    actor: str | None = None,
    read_env: bool = True,
    shadow: ShadowLimits | None = None,
) -> FastAPI:
    """The API serving `competitions` (`/reports/...` is `default_slug`, else the first).
    `api_token` / `actor` default to $CRUNCH_API_TOKEN / $CRUNCH_API_ACTOR when `read_env`;
    `shadow` (the shadow entry's limits; None: disabled) to $CRUNCH_API_SHADOW and its limits. A
    shadow candidate runs in the model sandbox, which passes it none of this process's environment
    (the token, the database URLs) and none of its files or network; the entry refuses to run one
    without the sandbox."""
    if not competitions:
        raise ValueError("the report API needs at least one competition")
    by_slug = {c.slug: c for c in competitions}
    if len(by_slug) != len(competitions):
        raise ValueError("a competition is listed twice")
    default = by_slug[default_slug] if default_slug else competitions[0]
    token = api_token if api_token is not None else (os.environ.get(API_TOKEN_ENV) or None if read_env else None)
    actor_name = actor or (os.environ.get(API_ACTOR_ENV) if read_env else None) or DEFAULT_API_ACTOR
    shadow_limits = shadow if shadow is not None else (shadow_limits_from_env() if read_env else None)

    app = HardenedAPI(
        title="crunch-dagster report API",
        version="1",
        description="Leaderboards, predictions, checkpoints and emissions of the served competitions. Mutations "
                    f"need `Authorization: Bearer <{API_TOKEN_ENV}>`; without a configured token they are disabled. "
                    "A prediction's output is served only once its cycle is resolved (scored or voided), except "
                    "with the same token.",
        docs_url=None, redoc_url=None,  # served by docs_routes, with their own content security policy
        exception_handlers={RequestValidationError: validation_error},
    )
    app.csp_by_path = docs_routes(app)
    app.body_limit_by_suffix = {"/shadow": SHADOW_BODY_MAX_BYTES} if shadow_limits is not None else {}
    app.state.competitions = by_slug
    app.state.default_slug = default.slug
    bearer = HTTPBearer(auto_error=False, description=f"the value of {API_TOKEN_ENV}")

    def operator(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
        if token is None:
            raise HTTPException(403, f"mutations are disabled: {API_TOKEN_ENV} is not set on the server")
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(403, "wrong token")
        return actor_name

    def operator_read(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> bool:
        """An open read: True when it carries the operator's token, which then shows what only the
        operator sees (unresolved outputs: the embargo, resources/store/reports.py; failure details).
        A token that is given but wrong is refused, never answered with the open view as if it were right."""
        if credentials is None:
            return False
        if token is None:
            raise HTTPException(403, f"no operator token is configured on the server ({API_TOKEN_ENV}): reads are open, "
                                     "unresolved predictions embargoed; send no Authorization header")
        return bool(operator(credentials))

    def by_slug_dependency(slug: Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,63}$")]) -> ReportCompetition:
        competition = by_slug.get(slug)
        if competition is None:
            raise HTTPException(404, f"no competition {slug!r}; served: {', '.join(sorted(by_slug))}")
        return competition

    from crunch_assets.api import reference

    def default_dependency() -> ReportCompetition:
        return default

    shadow_runs = threading.Lock()  # one shadow run at a time in this process
    # Ours on /competitions/{slug}; the reference's shapes (the coordinator webapp's contract) on
    # /reports (the default competition) and /competitions/{slug}/reports; /reports also answers
    # our paths the reference has no counterpart of (breakdowns, proofs, audit, gate, lag, exports,
    # rules, disputes, what-if and shadow runs).
    app.include_router(build_router(by_slug_dependency, operator, operator_read, shadow_limits, shadow_runs),
                       prefix="/competitions/{slug}")
    app.include_router(reference.build_reference_router(by_slug_dependency, operator),
                       prefix="/competitions/{slug}/reports")
    reports = reference.build_reference_router(default_dependency, operator)
    app.include_router(reports, prefix="/reports")
    app.include_router(_without(build_router(default_dependency, operator, operator_read, shadow_limits, shadow_runs),
                                reports), prefix="/reports")

    @app.get("/health", tags=["health"])
    def health() -> JSONResponse:
        """The process is up and the database answers."""
        try:
            default.reports.ping()
        except Exception as error:  # any failure to reach the database is "unavailable"
            return JSONResponse({"status": "unavailable", "database": f"unreachable: {type(error).__name__}"}, 503)
        return JSONResponse({"status": "ok", "database": "reachable", "competitions": sorted(by_slug)})

    @app.get("/healthz", tags=["health"])
    def healthz() -> JSONResponse:
        """The reference's name of /health."""
        return health()

    @app.get("/info", tags=["reference (coordinator webapp)"])
    def node_info() -> dict:
        """The node's identity, as the reference's: the default competition's crunch account
        (CRUNCH_<SLUG>_CRUNCH_PUBKEY; null when not set) and its network (CRUNCH_<SLUG>_NETWORK:
        mainnet-beta, devnet or testnet; null when not declared), and every served competition's."""
        return {**reference.info(default), "competitions": [reference.info(c) for c in competitions]}

    @app.get("/competitions/{slug}/info", tags=["reference (coordinator webapp)"])
    def competition_info(c: Annotated[ReportCompetition, Depends(by_slug_dependency)]) -> dict:
        return reference.info(c)

    @app.get("/competitions", tags=["competitions"])
    def list_competitions() -> dict:
        return {"default": default.slug, "competitions": [
            {"slug": c.slug, "description": c.spec.description, "scopes": [s.key for s in c.spec.scopes],
             "checkpoint_interval_seconds": c.spec.checkpoint_interval_seconds,
             "rules_fingerprint": c.rules_book.current.fingerprint if c.rules_book else None} for c in competitions]}

    from crunch_assets.api.page import build_page_router

    app.include_router(build_page_router(by_slug, default.slug))
    from crunch_assets.api.receipt_widget import build_receipt_files_router

    app.include_router(build_receipt_files_router())
    return app


def _without(router: APIRouter, taken_by: APIRouter) -> APIRouter:
    """`router` less the routes (path and method) `taken_by` already answers."""
    taken = {(route.path, method) for route in taken_by.routes for method in getattr(route, "methods", ())}
    router.routes = [route for route in router.routes
                     if not any((route.path, method) in taken for method in getattr(route, "methods", ()))]
    return router


def checkpoint_or_404(c: ReportCompetition, checkpoint_id: int):
    checkpoint = c.store.checkpoint_by_id(checkpoint_id)
    if checkpoint is None:
        raise HTTPException(404, f"no checkpoint {checkpoint_id} in {c.slug}")
    return checkpoint


def model_or_404(c: ReportCompetition, model_id: str):
    model = next((m for m in c.store.models() if m.model_id == model_id), None)
    if model is None:
        raise HTTPException(404, f"no model {model_id!r} in {c.slug}")
    return model


def build_router(competition_dependency: Callable[..., ReportCompetition], operator: Callable[..., str],
                 operator_read: Callable[..., bool], shadow_limits: ShadowLimits | None = None,
                 shadow_runs: "threading.Lock | None" = None) -> APIRouter:
    router = APIRouter()
    Competition = Annotated[ReportCompetition, Depends(competition_dependency)]
    Operator = Annotated[str, Depends(operator)]
    IsOperator = Annotated[bool, Depends(operator_read)]
    # Each section adds its routes (the aliases carry the dependencies: competition, operator token).
    _add_model_routes(router, Competition, Operator, IsOperator)
    _add_record_routes(router, Competition, Operator, IsOperator)
    _add_checkpoint_routes(router, Competition, Operator, IsOperator)
    _add_rules_routes(router, Competition, Operator, IsOperator)
    _add_schema_and_lag_routes(router, Competition, Operator, IsOperator)
    _add_lifecycle_routes(router, Competition, Operator, IsOperator)
    _add_shadow_route(router, Competition, Operator, IsOperator, shadow_limits, shadow_runs)
    add_contribution_routes(router, Competition, IsOperator)  # metrics, diversity, ensembles (contribution_views.py)
    return router


def _add_model_routes(router: APIRouter, Competition, Operator, IsOperator) -> None:
    """Leaderboard, models, a model's scores and export."""

    @router.get("/leaderboard", tags=["leaderboard"])
    def leaderboard(
        c: Competition,
        as_of: Annotated[UtcInstant | None, Query(description="the newest leaderboard at or before this instant")] = None,
        window: Annotated[Ident | None, Query(description="rank by this window (default: the ranking key)")] = None,
        scope: Annotated[Ident | None, Query(description="values of this scope (default: combined)")] = None,
    ) -> dict:
        windows = [w.name for w in c.spec.leaderboard_windows]
        if window is not None and window not in windows:
            raise HTTPException(422, f"window {window!r} is not one of {', '.join(windows)}")
        if scope is not None and c.spec.scope(scope) is None:
            raise HTTPException(422, f"scope {scope!r} is not one of {', '.join(s.key for s in c.spec.scopes)}")
        return leaderboard_view(c, c.store.leaderboard(as_of), window or c.spec.ranking_key, scope)

    @router.get("/models", tags=["models"])
    def models(c: Competition) -> dict:
        return {"models": [
            {"model_id": m.model_id, "name": m.name, "player_id": m.player_id, "player_name": m.player_name,
             "state": m.state, "cruncher_index": m.cruncher_index,
             "first_seen_at": m.first_seen_at, "last_seen_at": m.last_seen_at} for m in c.store.models()]}

    @router.get("/models/global", tags=["models"])
    def global_scores(c: Competition) -> dict:
        return models_global(c, c.store.leaderboard())

    @router.get("/models/params", tags=["models"])
    def scope_scores(c: Competition) -> dict:
        return models_params(c, c.store.leaderboard())

    @router.get("/models/{model_id}/scores", tags=["models"])
    def model_scores(
        c: Competition, model_id: ModelId,
        start: Annotated[UtcInstant | None, Query()] = None, end: Annotated[UtcInstant | None, Query()] = None,
    ) -> dict:
        """The model's score per hour (combined over scopes, under the eligibility policy)."""
        model_or_404(c, model_id)
        _span(start, end)
        if (start is None) != (end is None):
            raise HTTPException(422, "give both start and end, or neither (the last 72 hours of data)")
        if start is not None and end - start > timedelta(days=SERIES_MAX_DAYS):
            raise HTTPException(422, f"give start and end at most {SERIES_MAX_DAYS} days apart")
        return model_score_series(c, [model_id], start, end)

    @router.get("/models/{model_id}/export", tags=["exports"],
                responses={200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}})
    def model_export(
        c: Competition, model_id: ModelId, start: Annotated[UtcInstant, Query()], end: Annotated[UtcInstant, Query()],
        is_operator: IsOperator, format: Annotated[Literal["csv", "parquet"], Query()] = "csv",
    ) -> StreamingResponse:
        """The model's predictions and scores in [start, end) (at most 31 days), streamed a page at a time.
        Predictions whose cycle is not resolved yet are left out, except for the operator (bearer token)."""
        model_or_404(c, model_id)
        _span(start, end, EXPORT_MAX_DAYS)
        batches = c.reports.prediction_batches(model_id, start, end, PAGE_LIMIT_MAX,
                                               unresolved="shown" if is_operator else "omitted")
        name = f"{c.slug}-{model_id}-{start:%Y%m%dT%H%M}-{end:%Y%m%dT%H%M}".replace("/", "_")
        if format == "csv":
            return StreamingResponse(exports.csv_chunks(batches), media_type="text/csv",
                                     headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})
        return StreamingResponse(exports.parquet_chunks(batches), media_type="application/vnd.apache.parquet",
                                 headers={"Content-Disposition": f'attachment; filename="{name}.parquet"'})


def _add_record_routes(router: APIRouter, Competition, Operator, IsOperator) -> None:
    """Predictions (embargoed), feeds, snapshots."""

    @router.get("/predictions", tags=["predictions"])
    def predictions(
        c: Competition,
        is_operator: IsOperator,
        model_id: Annotated[ModelIdFilter | None, Query()] = None,
        scope: Annotated[Ident | None, Query()] = None,
        status: Annotated[Literal[PREDICTION_STATUSES] | None, Query()] = None,  # type: ignore[valid-type]
        start: Annotated[UtcInstant | None, Query()] = None,
        end: Annotated[UtcInstant | None, Query()] = None,
        order: Annotated[Literal["asc", "desc"], Query()] = "asc",
        limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX)] = PAGE_LIMIT_DEFAULT,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> dict:
        """Predictions by cycle time, a page at a time: pass `next_cursor` back as `cursor`. A prediction
        whose cycle is not resolved yet is listed without its output (`embargoed`), except for the
        operator (bearer token). `status_reason` says what failed; with the operator's token each
        prediction also has `status_detail` (the reason as recorded: the model's exception, file and
        line) and its score `failed_detail`."""
        _span(start, end)
        public = c.spec.public_input_keys
        page = c.reports.predictions(model_id=model_id, scope_key=scope, status=status, start=start, end=end,
                                     after=decode_cursor(cursor), descending=order == "desc", limit=limit,
                                     with_input=bool(public), unresolved="shown" if is_operator else "embargoed")
        views = [prediction_view(p, public) for p in page]
        if is_operator:
            for view, p in zip(views, page):
                view["status_detail"] = p.status_reason
                if view["score"] is not None:
                    view["score"]["failed_detail"] = p.score_failed_reason
        return {
            "predictions": views,
            "next_cursor": encode_cursor(page[-1].cycle_at, page[-1].id) if len(page) == limit else None,
        }

    @router.get("/feeds", tags=["feeds"])
    def feeds(c: Competition) -> dict:
        return {"feeds": [vars(f) for f in c.reports.feeds()]}

    @router.get("/snapshots", tags=["snapshots"])
    def snapshots(
        c: Competition,
        model_id: Annotated[ModelIdFilter | None, Query()] = None,
        scope: Annotated[Ident | None, Query()] = None,
        start: Annotated[UtcInstant | None, Query()] = None,
        end: Annotated[UtcInstant | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX)] = PAGE_LIMIT_DEFAULT,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> dict:
        """Hourly snapshots per model and scope, a page at a time."""
        _span(start, end)
        page = c.reports.snapshots(model_id=model_id, scope_key=scope, start=start, end=end,
                                   after=decode_cursor(cursor), limit=limit)
        return {"snapshots": [snapshot_view(s) for s in page],
                "next_cursor": encode_cursor(page[-1].period_start, page[-1].id) if len(page) == limit else None}


def _add_checkpoint_routes(router: APIRouter, Competition, Operator, IsOperator) -> None:
    """Checkpoints, their audit and gate, emissions, a model's breakdown, proof and receipt."""

    @router.get("/checkpoints", tags=["checkpoints"])
    def checkpoints(
        c: Competition,
        status: Annotated[Literal["PENDING", "SUBMITTED", "CLAIMABLE", "PAID", "SKIPPED"] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=CHECKPOINT_LIMIT_MAX)] = 50,
    ) -> dict:
        """The newest checkpoints first, with their reward split; `lifecycle.verified` is false (with the
        reasons) for a checkpoint past PENDING without a matching audit trail and gate result;
        `skipped` gives a SKIPPED one's reason; `unpayable` says why a PENDING one can never be
        submitted (and that an operator may skip it)."""
        rows = c.reports.checkpoints(status=status, limit=limit)
        trails = c.payouts.audit_trails([cp.id for cp in rows])
        return {"checkpoints": [checkpoint_summary(cp, trails.get(cp.id, []), c.spec) for cp in rows]}

    @router.get("/checkpoints/{checkpoint_id}", tags=["checkpoints"])
    def checkpoint(c: Competition, checkpoint_id: CheckpointId) -> dict:
        """One checkpoint: the emission, the policies, the rules fingerprint it was built under (and
        those its cycles were scored under), the stored gate results, the audit trail and disputes."""
        cp = checkpoint_or_404(c, checkpoint_id)
        return checkpoint_view(cp, c.payouts.gate(cp.id), c.payouts.audit_trail(cp.id), c.store.disputes.disputes(cp.id),
                               c.spec)

    @router.get("/checkpoints/{checkpoint_id}/audit", tags=["checkpoints"])
    def checkpoint_audit(c: Competition, checkpoint_id: CheckpointId) -> dict:
        cp = checkpoint_or_404(c, checkpoint_id)
        trail = c.payouts.audit_trail(checkpoint_id)
        return {"checkpoint_id": checkpoint_id, "audit": [vars(a) for a in trail], "lifecycle": lifecycle_view(cp, trail)}

    @router.get("/checkpoints/{checkpoint_id}/gate", tags=["checkpoints"])
    def checkpoint_gate(c: Competition, checkpoint_id: CheckpointId) -> dict:
        """The stored results of the last gate run (null: never run). A fresh run recomputes every
        checkpoint's Merkle root, so it happens on submission or with `crunch-dagster checkpoints
        show --gate`, not on a public read."""
        cp = checkpoint_or_404(c, checkpoint_id)
        return {"checkpoint_id": checkpoint_id, "gate": c.payouts.gate(cp.id)}

    @router.get("/checkpoints/{checkpoint_id}/emission", tags=["emissions"])
    def emission(c: Competition, checkpoint_id: CheckpointId) -> dict:
        return payouts.emission_of(checkpoint_or_404(c, checkpoint_id))

    @router.get("/checkpoints/{checkpoint_id}/emission/cli-format", tags=["emissions"])
    def emission_cli(
        c: Competition, checkpoint_id: CheckpointId,
        pool: Annotated[int | None, Query(ge=1, le=10**18, description="prize pool to split (whole units)")] = None,
    ) -> dict:
        return payouts.cli_format(checkpoint_or_404(c, checkpoint_id), pool)

    @router.get("/emissions/latest", tags=["emissions"])
    def latest_emission(c: Competition) -> dict:
        cp = c.reports.latest_checkpoint()
        if cp is None:
            raise HTTPException(404, f"{c.slug} has no checkpoint yet")
        return {"checkpoint_id": cp.id, "period_start": cp.period_start, "period_end": cp.period_end,
                "status": cp.status, **payouts.emission_of(cp)}

    @router.get("/checkpoints/{checkpoint_id}/models/{model_id}/breakdown", tags=["rewards"])
    def reward_breakdown(c: Competition, checkpoint_id: CheckpointId, model_id: ModelId) -> dict:
        """How the checkpoint paid this model: rank, score, eligibility, the rule, the counts."""
        cp = checkpoint_or_404(c, checkpoint_id)
        row = next((r for r in cp.entries.get("ranking", []) if r["model_id"] == model_id), None)
        if row is None:
            raise HTTPException(404, f"model {model_id!r} is not in checkpoint {checkpoint_id}")
        return {"checkpoint_id": cp.id, "status": cp.status, "period_start": cp.period_start,
                "period_end": cp.period_end, "model_id": model_id, "rank": row["rank"], "score": row["score"],
                "eligible": row["eligible"], "reward_pct": row["reward_pct"],
                "reward_percent": payouts.frac64_to_percent(row["reward_pct"]),
                "cruncher_index": row.get("cruncher_index"), "breakdown": row["breakdown"],
                "policies": cp.entries.get("policies", {})}

    @router.get("/checkpoints/{checkpoint_id}/models/{model_id}/proof", tags=["rewards"])
    def merkle_proof(
        c: Competition, checkpoint_id: CheckpointId, model_id: ModelId,
        cycle_at: Annotated[UtcInstant, Query(description="the cycle time of the score")],
        scope: Annotated[Ident | None, Query()] = None,
    ) -> dict:
        """The Merkle inclusion proof of one of the model's scores in the checkpoint."""
        cp = checkpoint_or_404(c, checkpoint_id)
        if not cp.period_start <= cycle_at < cp.period_end:
            raise HTTPException(404, f"{cycle_at.isoformat()} is outside checkpoint {checkpoint_id}'s period")
        try:
            return inclusion_proof(c.store, cp, model_id, cycle_at, scope)
        except LookupError as error:
            raise HTTPException(404, str(error)) from None

    @router.get("/checkpoints/{checkpoint_id}/models/{model_id}/receipt", tags=["rewards"],
                responses={200: {"content": {"application/json": {}}, "description": "the receipt"},
                           404: {"description": "unknown checkpoint, a model it does not rank, or a checkpoint built "
                                                "before portable leaves (scheme 3)"},
                           503: {"description": "too many receipts being built: retry"}})
    def receipt(c: Competition, checkpoint_id: CheckpointId, model_id: ModelId) -> Response:
        """Everything the model's participant needs to check their share offline: each of the model's
        leaves in the period (the fields it is hashed from, its output and truth, its inclusion path),
        the period's Merkle root, the previous and this chained root, the entries and their hash, the
        rules fingerprint, the reward and its breakdown. Check it with `verify_receipt.py` (the
        challenge package's, or `/static/verify_receipt.py`)."""
        cp = checkpoint_or_404(c, checkpoint_id)
        if not _receipt_slots.acquire(timeout=RECEIPT_WAIT_SECONDS):
            raise HTTPException(503, "too many receipts are being built: retry shortly", headers={"Retry-After": "10"})
        try:
            document = build_receipt(c.slug, c.store, cp, model_id)
        except ReceiptUnavailable as error:
            raise HTTPException(404, str(error)) from None
        finally:
            _receipt_slots.release()
        return Response(json_codec.dumps(document).encode(), media_type="application/json")


def _add_rules_routes(router: APIRouter, Competition, Operator, IsOperator) -> None:
    """The rules fingerprint and its recorded documents."""
    def book_or_404(c: ReportCompetition):
        if c.rules_book is None:
            raise HTTPException(404, f"{c.slug}'s rules are not loaded in this API process")
        return c.rules_book

    @router.get("/rules", tags=["rules"])
    def rules(c: Competition) -> dict:
        """The rules fingerprint in force now, every declared version (each in force from its cycle),
        and the document the current fingerprint is the sha256 of (RFC 8785 canonical JSON)."""
        book = book_or_404(c)
        return {"fingerprint": book.current.fingerprint, "scheme": FINGERPRINT_SCHEME,
                "engine_version": ENGINE_VERSION, "versions": book.schedule(), "document": book.current.document}

    @router.get("/rules/{fingerprint}", tags=["rules"])
    def rules_document(c: Competition,
                       fingerprint: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="a rules fingerprint")]) -> dict:
        """A fingerprint a cycle was scored or a checkpoint built under, with its recorded document;
        `verified`: the sha256 of the document's RFC 8785 bytes is the fingerprint."""
        recorded = c.store.rules.documents([fingerprint]).get(fingerprint)
        if recorded is None:
            raise HTTPException(404, f"{c.slug} has recorded no rules fingerprint {fingerprint}")
        return {"fingerprint": fingerprint, "cycle_digest": recorded.cycle_digest, "document": recorded.document,
                "verified": digest(recorded.document) == fingerprint}


def _add_schema_and_lag_routes(router: APIRouter, Competition, Operator, IsOperator) -> None:
    """The report schema and the lag."""

    @router.get("/schema", tags=["schema"])
    def schema(c: Competition) -> dict:
        return report_schema(c.spec)

    @router.get("/schema/leaderboard-columns", tags=["schema"])
    def schema_columns(c: Competition) -> list[dict]:
        return report_schema(c.spec)["leaderboard_columns"]

    @router.get("/schema/metrics-widgets", tags=["schema"])
    def schema_widgets(c: Competition) -> list[dict]:
        return report_schema(c.spec)["metrics_widgets"]

    @router.get("/lag", tags=["health"])
    def lag(c: Competition) -> dict:
        """How far behind now the last stored cycle, score, leaderboard and checkpoint are."""
        return lag_view(c, c.reports.lag([s.key for s in c.spec.scopes]), clock.now())


def _add_lifecycle_routes(router: APIRouter, Competition, Operator, IsOperator) -> None:
    """The checkpoint lifecycle, copy clusters and disputes (mutations behind the token)."""
    def transition(c: ReportCompetition, checkpoint_id: int, to_status: str, actor: str, tx_hash: str | None,
                   note: str | None) -> dict:
        outcome = advance_over_http(c, checkpoint_id, to_status, actor, tx_hash, note)
        return {"changed": outcome.changed, "message": outcome.message,
                "checkpoint": checkpoint_summary(outcome.checkpoint),
                "audit": vars(outcome.audit) if outcome.audit else None}

    conflict = {409: {"description": "illegal transition, the safety gate refused, or a skip refused (the checkpoint "
                                     "can be paid, or is not settled, genuine and in order)"},
                401: {"description": "no bearer token"}, 403: {"description": "wrong token, or mutations disabled"},
                404: {"description": "unknown checkpoint"}}

    @router.post("/checkpoints/{checkpoint_id}/confirm", tags=["lifecycle"], responses=conflict)
    def confirm(c: Competition, actor: Operator, checkpoint_id: CheckpointId, body: Annotated[ConfirmBody, Body()]) -> dict:
        """PENDING -> SUBMITTED with the on-chain transaction hash, after the emission safety gate."""
        return transition(c, checkpoint_id, CheckpointStatus.SUBMITTED, actor, body.tx_hash, body.note)

    @router.patch("/checkpoints/{checkpoint_id}/status", tags=["lifecycle"], responses=conflict)
    def advance_status(c: Competition, actor: Operator, checkpoint_id: CheckpointId,
                       body: Annotated[StatusBody, Body()]) -> dict:
        """One step forward: SUBMITTED (needs tx_hash; gated), CLAIMABLE, PAID; or SKIPPED, from PENDING
        with the reason as `note`, for a period nobody can be paid for (the gate must refuse it for
        that; it then pays nothing, ever, and the next period may be submitted)."""
        return transition(c, checkpoint_id, body.status, actor, body.tx_hash, body.note)

    @router.get("/checkpoints/{checkpoint_id}/copy-clusters", tags=["checkpoints"])
    def copy_clusters(c: Competition, checkpoint_id: CheckpointId) -> dict:
        """The checkpoint's copy clusters (members, evidence, who is paid) and every resolution
        recorded for it. Ids, counts and fractions only: never an output."""
        cp = checkpoint_or_404(c, checkpoint_id)
        return {"checkpoint_id": cp.id, "status": cp.status, "copy_detection": c.spec.copy_detection.describe(),
                "copy_clusters": cp.entries.get("copy_clusters", []),
                "resolutions": [vars(r) for r in c.store.copies.resolution_history(cp.id)]}

    @router.post("/checkpoints/{checkpoint_id}/copy-clusters/{cluster_key}/resolve", tags=["lifecycle"],
                 responses={**conflict, 409: {"description": "the checkpoint is past PENDING"},
                            404: {"description": "unknown checkpoint or cluster"}})
    def resolve_copy(c: Competition, actor: Operator, checkpoint_id: CheckpointId,
                     cluster_key: Annotated[str, Path(pattern=payouts.CLUSTER_KEY_PATTERN.pattern)],
                     body: Annotated[ResolveCopyBody, Body()]) -> dict:
        """Resolve a copy cluster of a PENDING checkpoint (audited): pay one member (`pay`) or every
        member (`pay_all`). The checkpoint applies it when it is next built (the checkpoint sensor
        sees the change); until then the gate refuses it."""
        try:
            resolution = payouts.resolve_copy(c.spec, c.store, checkpoint_id, cluster_key, actor=actor,
                                              paid_model_id=body.pay, pay_all=body.pay_all, note=body.note)
        except payouts.InvalidRequest as error:
            raise HTTPException(422, str(error)) from None
        except payouts.CopyResolutionRefused as error:
            if error.not_found:
                raise HTTPException(404, str(error)) from None
            if error.status != CheckpointStatus.PENDING:
                raise HTTPException(409, {"message": str(error), "status": error.status}) from None
            raise HTTPException(422, str(error)) from None
        return {"resolution": vars(resolution),
                "message": f"cluster {cluster_key} of checkpoint {checkpoint_id}: resolution #{resolution.id} recorded; "
                           "the checkpoint applies it when it is rebuilt"}

    @router.get("/checkpoints/{checkpoint_id}/disputes", tags=["checkpoints"])
    def checkpoint_disputes(c: Competition, checkpoint_id: CheckpointId) -> dict:
        """The checkpoint's disputes (who, what, which cycles), open or resolved, oldest first."""
        cp = checkpoint_or_404(c, checkpoint_id)
        disputes = c.store.disputes.disputes(cp.id)
        return {"checkpoint_id": cp.id, "status": cp.status,
                "dispute_window_seconds": c.spec.gate.dispute_window_seconds,
                "open": sum(1 for d in disputes if d.is_open), "disputes": [vars(d) for d in disputes]}

    def dispute_refused(error: payouts.DisputeRefused) -> HTTPException:
        if error.not_found:
            return HTTPException(404, str(error))
        if error.status is not None and error.status != CheckpointStatus.PENDING:
            return HTTPException(409, {"message": str(error), "status": error.status})
        return HTTPException(422, str(error))

    @router.post("/checkpoints/{checkpoint_id}/disputes", tags=["lifecycle"],
                 responses={**conflict, 409: {"description": "the checkpoint is past PENDING"}})
    def open_dispute(c: Competition, actor: Operator, checkpoint_id: CheckpointId,
                     body: Annotated[DisputeBody, Body()]) -> dict:
        """Record a dispute of a PENDING checkpoint (audited, append-only): it cannot be SUBMITTED
        until the dispute is resolved."""
        try:
            dispute = payouts.open_dispute(c.spec, c.store, checkpoint_id, claimant=body.claimant, what=body.what,
                                           cycles=[(r.first, r.last) for r in body.cycles], actor=actor, note=body.note)
        except payouts.InvalidRequest as error:
            raise HTTPException(422, str(error)) from None
        except payouts.DisputeRefused as error:
            raise dispute_refused(error) from None
        return {"dispute": vars(dispute),
                "message": f"dispute #{dispute.id} of checkpoint {checkpoint_id} recorded: it blocks submission until "
                           "resolved"}

    @router.post("/checkpoints/{checkpoint_id}/disputes/{dispute_id}/resolve", tags=["lifecycle"],
                 responses={**conflict, 409: {"description": "the checkpoint is past PENDING"}})
    def resolve_dispute(c: Competition, actor: Operator, checkpoint_id: CheckpointId,
                        dispute_id: Annotated[int, Path(ge=1, le=ID_MAX)],
                        body: Annotated[ResolveDisputeBody, Body()]) -> dict:
        """Record how a dispute of a PENDING checkpoint was resolved (audited, append-only)."""
        try:
            dispute = payouts.resolve_dispute(c.spec, c.store, checkpoint_id, dispute_id, resolution=body.resolution,
                                              actor=actor)
        except payouts.InvalidRequest as error:
            raise HTTPException(422, str(error)) from None
        except payouts.DisputeRefused as error:
            raise dispute_refused(error) from None
        return {"dispute": vars(dispute), "message": f"dispute #{dispute.id} of checkpoint {checkpoint_id} resolved"}


def _add_shadow_route(router: APIRouter, Competition, Operator, IsOperator, shadow_limits: ShadowLimits | None, shadow_runs: "threading.Lock | None") -> None:
    """The shadow entry (off unless the operator enables it)."""

    @router.post("/shadow", tags=["shadow"],
                 responses={404: {"description": "the shadow entry is not enabled"},
                            422: {"description": "a range with no whole period, over the limits, or a run past its "
                                                 "runtime limit"},
                            409: {"description": "the deployment runs local models without the sandbox"},
                            429: {"description": "another shadow run is in progress"}})
    def shadow_entry(c: Competition, actor: Operator, body: Annotated[ShadowBody, Body()]) -> dict:
        """Run a participant's model file on the stored inputs of the checkpoint periods inside
        [start, end) and report, per period, the rank it would have taken, the share it would have
        been paid and its breakdown, with the field as it really was (or in place of `replaces`).
        Nothing is written. Enabled by the operator (CRUNCH_API_SHADOW=on), bounded in range and
        runtime, one run at a time."""
        if shadow_limits is None:
            raise HTTPException(404, f"the shadow entry is not enabled on this server ({SHADOW_ENV}=on)")
        if c.rules is None:
            raise HTTPException(404, f"{c.slug}'s rules are not loaded in this API process")
        _span(body.start, body.end)
        if shadow_runs is not None and not shadow_runs.acquire(blocking=False):
            raise HTTPException(429, "another shadow run is in progress: try again when it ends")
        try:
            with tempfile.TemporaryDirectory(prefix="crunch-shadow-source-") as directory:
                model = pathlib.Path(directory) / "candidate.py"
                model.write_text(body.model_source)
                report = run_shadow(c.spec, c.rules, c.ground_truth, c.store, c.accounts, model, body.start,
                                    body.end, replaces=body.replaces, configured_runner=c.model_runner,
                                    limits=shadow_limits, require_sandbox=True)
        except ShadowRefused as error:
            raise HTTPException(409, str(error)) from None
        except (ValueError, ShadowLimitExceeded) as error:
            raise HTTPException(422, str(error)) from None
        finally:
            if shadow_runs is not None:
                shadow_runs.release()
        return {**report.as_dict(), "requested_by": actor,
                "limits": {"max_hours": shadow_limits.max_hours,
                           "max_runtime_seconds": shadow_limits.max_runtime_seconds}}


