"""The participant page: server-rendered HTML (jinja2 templates kept as package data) with an SVG
chart, no JavaScript build. `/` is the default competition; `/page/{slug}` any served one;
`/page/{slug}/models/{model_id}` explains one model's reward. Its style is a file (`/static/page.css`):
the content security policy allows no inline script or style."""

from __future__ import annotations

from datetime import datetime
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from crunch_assets.api.competitions import ReportCompetition
from crunch_assets.api.views import checkpoint_summary, leaderboard_view, model_score_series
from crunch_assets.payouts import frac64_to_percent
from resources.model_ids import MODEL_ID_PATTERN

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")
PAGE_CHECKPOINTS = 10

templates = Environment(loader=PackageLoader("crunch_assets.api", "templates"), autoescape=select_autoescape(["html"]))


def _number(value, digits: int = 6) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _percent(value) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


templates.filters["number"] = _number
templates.filters["percent"] = _percent
templates.filters["reward_percent"] = lambda pct: f"{frac64_to_percent(pct or 0):g} %"
templates.filters["instant"] = lambda v: "—" if v is None else (v if isinstance(v, str) else v.strftime("%Y-%m-%d %H:%M UTC"))


def score_chart_svg(series: dict[str, list[dict]], width: int = 760, height: int = 260) -> Markup:
    """One polyline per model (score per hour), axes labelled with the value range and the hours."""
    points = [(p["hour"], p["value"]) for values in series.values() for p in values]
    if not points:
        return Markup('<svg class="score-chart" width="%d" height="40" role="img" aria-label="no scores yet">'
                      '<text x="4" y="24">no scores yet</text></svg>' % width)
    left, right, top, bottom = 60, 140, 12, 28
    hours = sorted({h for h, _ in points})
    first, last = hours[0].timestamp(), hours[-1].timestamp()
    low, high = min(v for _, v in points), max(v for _, v in points)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    span_x = max(last - first, 1.0)

    def x(hour: datetime) -> float:
        return left + (hour.timestamp() - first) / span_x * (width - left - right)

    def y(value: float) -> float:
        return top + (high - value) / (high - low) * (height - top - bottom)

    parts = [(f'<svg class="score-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
              f'viewBox="0 0 {width} {height}" role="img" aria-label="score per hour">'),
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#999"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#999"/>',
             f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" font-size="11">{high:.3f}</text>',
             f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end" font-size="11">{low:.3f}</text>',
             f'<text x="{left}" y="{height - 8}" font-size="11">{hours[0]:%m-%d %H:%M}</text>',
             f'<text x="{width - right}" y="{height - 8}" text-anchor="end" font-size="11">{hours[-1]:%m-%d %H:%M}</text>']
    for index, (model_id, values) in enumerate(sorted(series.items())):
        color = PALETTE[index % len(PALETTE)]
        coordinates = " ".join(f"{x(p['hour']):.1f},{y(p['value']):.1f}" for p in values)
        label = Markup.escape(model_id)
        parts.append(f'<polyline class="series" data-model="{label}" data-points="{len(values)}" fill="none" '
                     f'stroke="{color}" stroke-width="1.5" points="{coordinates}"/>')
        parts.append(f'<text x="{width - right + 8}" y="{top + 14 * (index + 1)}" fill="{color}" font-size="12">{label}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def build_page_router(competitions: dict[str, ReportCompetition], default_slug: str) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def competition(slug: str) -> ReportCompetition:
        if slug not in competitions:
            raise HTTPException(404, f"no competition {slug!r}")
        return competitions[slug]

    def competition_page(c: ReportCompetition) -> HTMLResponse:
        board = leaderboard_view(c, c.store.leaderboard(), c.spec.ranking_key, None)
        checkpoints = [checkpoint_summary(cp) for cp in c.reports.checkpoints(limit=PAGE_CHECKPOINTS)]
        series = model_score_series(c, None, None, None)
        html = templates.get_template("competition.html").render(
            c=c, spec=c.spec, board=board, checkpoints=checkpoints, chart=score_chart_svg(series["series"]),
            series=series, slugs=sorted(competitions), models=c.store.models(),
            rules_fingerprint=c.rules_book.current.fingerprint if c.rules_book else None,
        )
        return HTMLResponse(html)

    stylesheet = resources.files("crunch_assets.api").joinpath("static/page.css").read_bytes()

    @router.get("/static/page.css")
    def page_css() -> Response:
        return Response(stylesheet, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"})

    @router.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return competition_page(competitions[default_slug])

    @router.get("/page/{slug}", response_class=HTMLResponse)
    def page(slug: Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,63}$")]) -> HTMLResponse:
        return competition_page(competition(slug))

    @router.get("/page/{slug}/models/{model_id}", response_class=HTMLResponse)
    def explain(slug: Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,63}$")],
                model_id: Annotated[str, Path(pattern=MODEL_ID_PATTERN)]) -> HTMLResponse:
        c = competition(slug)
        model = next((m for m in c.store.models() if m.model_id == model_id), None)
        if model is None:
            raise HTTPException(404, f"no model {model_id!r} in {slug}")
        board = leaderboard_view(c, c.store.leaderboard(), c.spec.ranking_key, None)
        entry = next((e for e in board["entries"] if e["model_id"] == model_id), None)
        rewards = []
        for cp in c.reports.checkpoints(limit=PAGE_CHECKPOINTS):
            row = next((r for r in cp.entries.get("ranking", []) if r["model_id"] == model_id), None)
            if row is not None:
                rewards.append({"checkpoint": checkpoint_summary(cp), "row": row, "models": len(cp.entries["ranking"])})
        series = model_score_series(c, [model_id], None, None)
        html = templates.get_template("model.html").render(
            c=c, spec=c.spec, model=model, entry=entry, rewards=rewards, chart=score_chart_svg(series["series"]),
            board=board, slugs=sorted(competitions), benchmark=model_id in c.spec.payout.benchmark_models,
        )
        return HTMLResponse(html)

    return router
