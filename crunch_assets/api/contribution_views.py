"""The report API's metrics, diversity and ensemble reads (the reference's `/reports/models/metrics`,
`/reports/diversity`, `/reports/models/{id}/diversity`, `/reports/ensemble/history`), and the one
line of guidance the page shows. Everything is read from what the rollups stored (the hourly
metric statistics in the snapshots, crunch_assets/metrics.py) and the checkpoints; an ensemble's
outputs are served through the embargo like any output.

No `from __future__ import annotations`: FastAPI must see the route functions' real annotations
(aliases local to add_contribution_routes), as in app.py."""

from datetime import timedelta
from typing import Annotated, Any, Callable

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import AwareDatetime

from crunch_assets import metrics
from crunch_assets.api.competitions import ReportCompetition
from crunch_assets.partitions import ceil_hour
from resources.model_ids import MODEL_ID_PATTERN, is_virtual_model_id

HIGH_CORRELATION = 0.9
HISTORY_LIMIT_MAX = 1000


def window_of(c: ReportCompetition, window: str | None) -> tuple[str, int]:
    name = window or c.spec.ranking_key
    seconds = next((w.seconds for w in c.spec.leaderboard_windows if w.name == name), None)
    if seconds is None:
        raise HTTPException(422, f"window {name!r} is not one of {', '.join(w.name for w in c.spec.leaderboard_windows)}")
    return name, seconds


def model_metrics(c: ReportCompetition, window: str | None = None, model_id: str | None = None) -> dict:
    """Every model's declared metrics over a leaderboard window ending with the last stored
    leaderboard's hour (per scope and combined)."""
    name, seconds = window_of(c, window)
    stored = c.store.leaderboard()
    base = {"window": name, "metrics": list(c.spec.metrics.names),
            "ensembles": [{"name": e.name, "model_id": e.model_id} for e in c.spec.ensembles]}
    if stored is None or not c.spec.metrics.enabled:
        return {**base, "as_of": None, "start": None, "end": None, "models": {}}
    end = ceil_hour(stored[0])
    start = end - timedelta(seconds=seconds)
    snapshots = c.store.snapshots(start, end, model_id=model_id)
    values = metrics.window_metrics(c.spec, metrics.hour_rows(snapshots, start, end),
                                    metrics.counted_cycles(c.store.stored_rollups(start, end), start, end))
    for model, v in values.items():
        v["ensemble"] = is_virtual_model_id(model)
    return {**base, "as_of": stored[0], "start": start, "end": end, "models": values}


def guidance(values: dict | None, ensemble: str | None) -> str:
    """One line, from the model's metrics, saying what would make it add more."""
    if not values:
        return "Not enough resolved cycles yet to measure what this model adds to the field."
    with_ensemble = values.get("ensemble_correlation")
    with_field = values.get("model_correlation")
    added = values.get("contribution")
    if with_ensemble is not None and with_ensemble >= HIGH_CORRELATION:
        return (f"Your predictions correlate {with_ensemble:.2f} with the ensemble {ensemble}: a more different model "
                "adds more.")
    if with_field is not None and with_field >= HIGH_CORRELATION:
        return f"Your predictions correlate {with_field:.2f} with the other models: a more different model adds more."
    if added is not None and added < 0:
        return (f"The ensemble scores better without your model (contribution {added:+.3g}): its different answers "
                "are wrong more often than they help.")
    if added is not None and added > 0:
        shown = f", correlation with the field {with_field:.2f}" if with_field is not None else ""
        return f"Your model adds to the ensemble (contribution {added:+.3g}{shown}): keep it different."
    if with_field is None:
        return "Your answers do not vary, so they cannot correlate with anything: a constant answer adds nothing."
    return f"Your predictions correlate {with_field:.2f} with the other models."


def diversity_view(c: ReportCompetition, model_id: str, values: dict | None) -> dict:
    ensemble = c.spec.contribution_ensemble.name if c.spec.contribution_ensemble else None
    values = values or {}
    correlation = values.get("model_correlation")
    return {"model_id": model_id, "ensemble": ensemble, "correlation_with_field": correlation,
            "correlation_with_ensemble": values.get("ensemble_correlation"), "contribution": values.get("contribution"),
            "diversity": None if correlation is None else 1.0 - correlation,
            "guidance": guidance(values, ensemble)}


def contribution_history(c: ReportCompetition, model_id: str, limit: int = 10) -> list[dict]:
    """The model's contribution per checkpoint period (newest first), as each checkpoint stored it."""
    history = []
    for cp in c.reports.checkpoints(limit=limit):
        row = next((r for r in cp.entries.get("ranking", []) if r["model_id"] == model_id), None)
        if row is None:
            continue
        breakdown = row.get("breakdown") or {}
        history.append({"checkpoint_id": cp.id, "period_start": cp.period_start, "period_end": cp.period_end,
                        "status": cp.status, "reward_pct": row.get("reward_pct"),
                        "contribution": breakdown.get("contribution"),
                        "reward_components": breakdown.get("reward_components")})
    return history


def contribution_page(c: ReportCompetition, model_id: str) -> dict:
    """What the model page's contribution section shows (templates/_contribution.html)."""
    found = model_metrics(c, None, model_id)
    values = found["models"].get(model_id)
    return {"window": found["window"], "metrics": found["metrics"], "values": values,
            "diversity": diversity_view(c, model_id, values), "checkpoints": contribution_history(c, model_id)}


def add_contribution_routes(router: APIRouter, competition: Callable[..., Any], is_operator: Callable[..., Any]) -> None:
    """Registered by app.build_router (a hook)."""
    Competition = competition
    IsOperator = is_operator
    Window = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_]{1,64}$",
                                         description="a leaderboard window (default: the ranking key)")]
    ModelId = Annotated[str, Path(pattern=MODEL_ID_PATTERN)]

    def known(c: ReportCompetition, model_id: str) -> None:
        if not any(m.model_id == model_id for m in c.store.models()):
            raise HTTPException(404, f"no model {model_id!r} in {c.slug}")

    @router.get("/models/metrics", tags=["metrics"])
    def all_metrics(c: Competition, window: Window = None) -> dict:
        """Every model's declared metrics (IC, hit rate, correlation with the field and each
        ensemble, drawdown, contribution, ...) over a leaderboard window, per scope and combined;
        ensembles included (marked)."""
        return model_metrics(c, window)

    @router.get("/models/{model_id}/metrics", tags=["metrics"])
    def one_model_metrics(c: Competition, model_id: ModelId, window: Window = None) -> dict:
        """One model's metrics over a window, its diversity, the page's guidance line and its
        contribution per checkpoint."""
        known(c, model_id)
        found = model_metrics(c, window, model_id)
        values = found["models"].get(model_id)
        return {**{k: v for k, v in found.items() if k != "models"}, "model_id": model_id, "values": values,
                "diversity": diversity_view(c, model_id, values), "checkpoints": contribution_history(c, model_id)}

    @router.get("/diversity", tags=["metrics"])
    def diversity(c: Competition, window: Window = None) -> dict:
        """Per model: correlation with the field and the ensemble, contribution, and guidance."""
        found = model_metrics(c, window)
        return {**{k: v for k, v in found.items() if k != "models"},
                "models": [diversity_view(c, m, v) for m, v in found["models"].items() if not is_virtual_model_id(m)]}

    @router.get("/models/{model_id}/diversity", tags=["metrics"])
    def model_diversity(c: Competition, model_id: ModelId, window: Window = None) -> dict:
        known(c, model_id)
        found = model_metrics(c, window, model_id)
        return {"window": found["window"], "as_of": found["as_of"],
                **diversity_view(c, model_id, found["models"].get(model_id))}

    @router.get("/ensemble/history", tags=["metrics"])
    def first_ensemble_history(
        c: Competition, is_operator: IsOperator,
        start: Annotated[AwareDatetime | None, Query()] = None, end: Annotated[AwareDatetime | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=HISTORY_LIMIT_MAX)] = 100,
    ) -> dict:
        """The reference's path: the first declared ensemble's history (see /ensembles/{name}/history)."""
        if not c.spec.ensembles:
            raise HTTPException(404, f"{c.slug} declares no ensemble")
        return ensemble_history(c, is_operator, c.spec.ensembles[0].name, start, end, limit)

    @router.get("/ensembles/{name}/history", tags=["metrics"])
    def ensemble_history(
        c: Competition, is_operator: IsOperator,
        name: Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,39}$")],
        start: Annotated[AwareDatetime | None, Query()] = None, end: Annotated[AwareDatetime | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=HISTORY_LIMIT_MAX)] = 100,
    ) -> dict:
        """The ensemble's outputs and scores, newest first. An output whose cycle is not resolved is
        embargoed like any other (listed without it), except for the operator (bearer token)."""
        ensemble = next((e for e in c.spec.ensembles if e.name == name), None)
        if ensemble is None:
            raise HTTPException(404, f"no ensemble {name!r} in {c.slug}; declared: "
                                     f"{', '.join(e.name for e in c.spec.ensembles) or 'none'}")
        page = c.reports.predictions(model_id=ensemble.model_id, start=start, end=end, descending=True, limit=limit,
                                     unresolved="shown" if is_operator else "embargoed")
        return {"ensemble": name, "model_id": ensemble.model_id, "history": [
            {"cycle_at": p.cycle_at, "scope_key": p.scope_key, "status": p.status, "embargoed": p.embargoed,
             "output": p.inference_output, "score": p.score_value} for p in page]}
