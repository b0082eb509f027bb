"""The participant page: server-rendered HTML (jinja2 templates kept as package data) with SVG
charts, no JavaScript. `/` is the default competition; `/page/{slug}` any served one, with a
switcher between them; `/page/{slug}/models/{model_id}` explains one model's reward;
`.../checkpoints/{id}/proof?cycle_at=` works a Merkle proof through. Its style is a file
(`/static/page.css`): the content security policy allows no inline script or style.

What a participant checking daily looks for, and where it is:
- what the score is and which way is better (the spec's score_name and direction), windows named
  "last 24 h", one date format (2026-11-01 13:00 UTC);
- the leaderboard with rank change since the previous checkpoint, status and lifetime rewards;
  per-scope standings when the competition has several scopes;
- a score chart with axes, gridlines and gaps: an hour without counted cycles breaks the lines,
  is shaded, and counts against the window's coverage;
- the checkpoints, a page at a time, filterable by status, with the transaction hash of paid ones
  and the rule that pays them said once;
- per model: running or quarantined, failed cycles and the last error (its public reason, never
  an unresolved cycle's), and a proof of a score worked through step by step.

No `from __future__ import annotations`: FastAPI must see the real annotations of the routes.
"""

import hashlib
import math
import re
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Path, Query
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from crunch_assets.api.competitions import ReportCompetition
from crunch_assets.api.contribution_views import contribution_page
from crunch_assets.api.receipt_widget import receipt_widget
from crunch_assets.api.views import (
    checkpoint_summary, direction_words, leaderboard_view, model_score_series, window_label,
)
from crunch_assets.failure_reasons import public_reason
from crunch_assets.merkle import leaf_json
from crunch_assets.model_health import QUARANTINE_META_KEY, QUARANTINED
from crunch_assets.payouts import frac64_to_percent
from crunch_assets.verification import inclusion_proof
from resources import clock
from resources.model_ids import MODEL_ID_PATTERN
from resources.store.lifecycles import CheckpointStatus, PredictionReportStatus

# The page's model path takes the one model-id grammar (resources/model_ids.py) the registry enforces.
MODEL_ID = re.compile(MODEL_ID_PATTERN)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")
PAGE_CHECKPOINTS = 10
PAGE_MAX = 100_000
CHART_MODELS_MAX = 10  # more lines than this cannot be told apart: the best-ranked are drawn
STATUSES = (CheckpointStatus.PENDING, CheckpointStatus.SUBMITTED, CheckpointStatus.CLAIMABLE, CheckpointStatus.PAID)
DATE_FORMAT = "%Y-%m-%d %H:%M"  # the one format of the page (UTC)

templates = Environment(loader=PackageLoader("crunch_assets.api", "templates"), autoescape=select_autoescape(["html"]))


def instant(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(timezone.utc).strftime(DATE_FORMAT) + " UTC"


def _number(value, digits: int = 6) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _percent(value) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def _rank_change(change) -> Markup:
    """+2 (up two places since the previous checkpoint), -1, "new" or "="."""
    if change is None:
        return Markup('<span class="change none">—</span>')
    if change == "new":
        return Markup('<span class="change new">new</span>')
    if change == 0:
        return Markup('<span class="change same">=</span>')
    arrow, kind = ("▲", "up") if change > 0 else ("▼", "down")
    return Markup(f'<span class="change {kind}">{arrow} {abs(change)}</span>')


templates.filters["number"] = _number
templates.filters["percent"] = _percent
templates.filters["reward_percent"] = lambda pct: f"{frac64_to_percent(pct or 0):g} %"
templates.filters["instant"] = instant
templates.filters["rank_change"] = _rank_change
templates.filters["window"] = window_label
templates.filters["path"] = lambda value: quote(str(value), safe="")
templates.globals["receipt_widget"] = receipt_widget  # templates/receipt_widget.html


# --- the chart -----------------------------------------------------------------------------------

def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / max(ticks, 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _short(label: str, limit: int = 28) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def score_chart_svg(series: dict[str, list[dict]], start: datetime | None, end: datetime | None,
                    hours_with_cycles: list[datetime], order: list[str] | None = None, direction: str = "",
                    width: int = 1000, height: int = 320) -> Markup:
    """One line per model (its value per hour), on axes with gridlines, full width. An hour without
    counted cycles is shaded and breaks every line (a gap is drawn as a gap, never bridged). At most
    CHART_MODELS_MAX lines: the first of `order` (best-ranked) that have values."""
    drawn_ids = [m for m in (order or sorted(series)) if series.get(m)][:CHART_MODELS_MAX]
    points = [p for m in drawn_ids for p in series[m]]
    if not points or start is None or end is None:
        return Markup(f'<svg class="score-chart empty" viewBox="0 0 {width} 40" role="img" aria-label="no scores yet">'
                      '<text x="8" y="26">no scores yet</text></svg>')
    left, right, top, bottom = 70, 16, 14, 58
    plot_w, plot_h = width - left - right, height - top - bottom
    low, high = min(p["value"] for p in points), max(p["value"] for p in points)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    step = _nice_step(high - low)
    low, high = math.floor(low / step) * step, math.ceil(high / step) * step
    span_s = (end - start).total_seconds()

    def x(at: datetime) -> float:
        return left + (at - start).total_seconds() / span_s * plot_w

    def y(value: float) -> float:
        return top + (high - value) / (high - low) * plot_h

    hour = timedelta(hours=1)
    parts = [f'<svg class="score-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'role="img" aria-label="score per hour, {direction}">',
             f'<rect class="plot" x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#bbb"/>']
    counted = set(hours_with_cycles)
    at = start
    while at < end:  # shade each run of hours without counted cycles
        if at not in counted:
            run_end = at
            while run_end < end and run_end not in counted:
                run_end += hour
            hours = int((run_end - at) / hour)
            parts.append(f'<rect class="gap" data-start="{at.isoformat()}" data-hours="{hours}" x="{x(at):.1f}" '
                         f'y="{top}" width="{x(run_end) - x(at):.1f}" height="{plot_h}" fill="#eee"/>')
            if x(run_end) - x(at) > 60:
                parts.append(f'<text class="gap-label" x="{(x(at) + x(run_end)) / 2:.1f}" y="{top + 14}" '
                             f'text-anchor="middle" font-size="11" fill="#777">no cycles</text>')
            at = run_end
        else:
            at += hour
    value = low
    while value <= high + step / 2:  # horizontal gridlines with their values
        parts.append(f'<line class="grid" x1="{left}" y1="{y(value):.1f}" x2="{width - right}" y2="{y(value):.1f}" '
                     f'stroke="#e4e4e4"/>')
        parts.append(f'<text class="y-tick" x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="12">'
                     f'{value:.{max(0, -math.floor(math.log10(step)) + 1) if step < 1 else 0}f}</text>')
        value += step
    hours_total = max(1, int(span_s // 3600))
    tick_hours = next(h for h in (1, 2, 3, 6, 12, 24, 48, 72, 168, 336, 720, 10**6) if hours_total / h <= 6)
    tick = start + timedelta(hours=(-start.hour) % tick_hours if tick_hours <= 24 else 0)
    while tick <= end:  # vertical gridlines and the hours, in the page's one date format
        parts.append(f'<line class="grid" x1="{x(tick):.1f}" y1="{top}" x2="{x(tick):.1f}" y2="{height - bottom}" '
                     f'stroke="#e4e4e4"/>')
        anchor = "start" if x(tick) - left < 60 else "end" if width - right - x(tick) < 60 else "middle"
        parts.append(f'<text class="x-tick" x="{x(tick):.1f}" y="{height - bottom + 16}" text-anchor="{anchor}" '
                     f'font-size="12">{tick.strftime(DATE_FORMAT)}</text>')
        tick += timedelta(hours=tick_hours)
    parts.append(f'<text class="axis-title" x="{left + plot_w / 2:.1f}" y="{height - 12}" text-anchor="middle" '
                 f'font-size="12" fill="#555">hour (UTC)</text>')
    parts.append(f'<text class="axis-title" x="14" y="{top + plot_h / 2:.1f}" text-anchor="middle" font-size="12" '
                 f'fill="#555" transform="rotate(-90 14 {top + plot_h / 2:.1f})">score ({direction})</text>')
    for index, model_id in enumerate(drawn_ids):
        color = PALETTE[index % len(PALETTE)]
        segments, previous = [], None
        for p in series[model_id]:
            command = "L" if previous is not None and p["hour"] - previous == hour and p["hour"] in counted else "M"
            if p["hour"] not in counted:  # a value in an hour that has no counted cycle cannot be; keep it a gap
                previous = None
                continue
            # each point sits in the middle of its hour
            segments.append(f'{command}{x(p["hour"] + hour / 2):.1f},{y(p["value"]):.1f}')
            previous = p["hour"]
        label = Markup.escape(model_id)
        pieces = " ".join(segments)
        parts.append(f'<path class="series" data-model="{label}" data-points="{len(segments)}" '
                     f'data-segments="{pieces.count("M")}" fill="none" stroke="{color}" stroke-width="1.8" '
                     f'd="{pieces}"><title>{label}</title></path>')
        for piece in (s for s in segments if s.startswith("M")):  # a lone hour is a dot, not an invisible line
            cx, cy = piece[1:].split(",")
            parts.append(f'<circle class="point" cx="{cx}" cy="{cy}" r="2.2" fill="{color}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def hour_gaps(start: datetime | None, end: datetime | None, counted: set[datetime]) -> list[dict]:
    """The runs of hours in [start, end) without counted cycles."""
    gaps, at = [], start
    while at is not None and at < end:
        if at not in counted:
            gap_end = at
            while gap_end < end and gap_end not in counted:
                gap_end += timedelta(hours=1)
            gaps.append({"start": at, "end": gap_end, "hours": int((gap_end - at).total_seconds() // 3600)})
            at = gap_end
        else:
            at += timedelta(hours=1)
    return gaps


def window_hours(c: ReportCompetition, as_of: datetime | None, seconds: int) -> dict | None:
    """The hours of the ranking window (from the competition's start at the earliest) in which
    cycles ran and counted, from the stored rollups: the leaderboard's coverage is of the cycles
    that ran, this says how many hours had none."""
    if as_of is None:
        return None
    end = as_of if as_of.minute == 0 and as_of.second == 0 and as_of.microsecond == 0 else \
        as_of.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = max(end - timedelta(seconds=seconds), c.spec.start)
    if end <= start:
        return None
    counted = {r.period_start for r in c.store.stored_rollups(start, end) if r.cycle_count > 0 and start <= r.period_start < end}
    total = int((end - start).total_seconds() // 3600)
    return {"start": start, "end": end, "hours_total": total, "hours_counted": len(counted),
            "coverage": len(counted) / total if total else None, "gaps": hour_gaps(start, end, counted)}


def chart_context(c: ReportCompetition, series: dict, order: list[str]) -> dict:
    """The chart, its legend and the coverage of its window (hours with counted cycles)."""
    start, end = series["start"], series["end"]
    hours_total = int((end - start).total_seconds() // 3600) if start and end else 0
    counted = series["hours_with_cycles"]
    counted_set = set(counted)
    gaps = hour_gaps(start, end, counted_set)
    drawn = [m for m in order if series["series"].get(m)][:CHART_MODELS_MAX]
    legend = [{"model_id": m, "label": _short(m), "color": PALETTE[i % len(PALETTE)],
               "hours": sum(1 for p in series["series"][m] if p["hour"] in counted_set)} for i, m in enumerate(drawn)]
    return {
        "svg": score_chart_svg(series["series"], start, end, counted, drawn, direction_words(c.spec)),
        "start": start, "end": end, "hours_total": hours_total, "hours_counted": len(counted), "gaps": gaps,
        "coverage": len(counted) / hours_total if hours_total else None, "legend": legend,
        "models_with_values": sum(1 for v in series["series"].values() if v),
    }


# --- what the pages show -------------------------------------------------------------------------

def model_states(c: ReportCompetition, now: datetime) -> dict[str, dict]:
    """Each model's registry state, and whether the fault policy holds it out now."""
    models = c.store.models()
    quarantines = c.store.latest_events(QUARANTINED, [m.model_id for m in models], now) if models else {}
    states = {}
    for m in models:
        event = quarantines.get(m.model_id)
        until = datetime.fromisoformat(event.meta[QUARANTINE_META_KEY]) if event and QUARANTINE_META_KEY in event.meta else None
        quarantined = until is not None and until > now
        states[m.model_id] = {"model": m, "state": m.state, "quarantined_until": until if quarantined else None,
                              "label": "quarantined" if quarantined else (m.state or "unknown").lower()}
    return states


def rank_changes(c: ReportCompetition, board: dict) -> tuple[dict[str, object], object]:
    """Each model's places gained since the leaderboard as of the previous checkpoint's end (same
    ranking, same window): +2 is two places up; "new" when it was not ranked then."""
    previous = c.reports.latest_checkpoint()
    if previous is None or not board["entries"]:
        return {}, None
    then = c.store.leaderboard(previous.period_end)
    if then is None:
        return {}, previous
    ranks_then = {e["model_id"]: e["rank"] for e in leaderboard_view(c, then, c.spec.ranking_key, None)["entries"]}
    return {e["model_id"]: (ranks_then[e["model_id"]] - e["rank"]) if e["model_id"] in ranks_then else "new"
            for e in board["entries"]}, previous


def policies_text(checkpoints: list[dict]) -> dict | None:
    """The rule that pays, said once: the policies of the newest checkpoint listed."""
    return checkpoints[0]["policies"] if checkpoints else None


def page_links(base: str, params: dict, page: int, total: int) -> dict:
    pages = max(1, math.ceil(total / PAGE_CHECKPOINTS))

    def link(number: int) -> str:
        query = {k: v for k, v in {**params, "page": number}.items() if v is not None and not (k == "page" and v == 1)}
        return base + ("?" + urlencode(query) if query else "")

    return {"page": page, "pages": pages, "total": total,
            "previous": link(page - 1) if page > 1 else None, "next": link(page + 1) if page < pages else None}


def not_found(message: str, competitions: dict[str, ReportCompetition], current: str | None = None) -> HTMLResponse:
    html = templates.get_template("not_found.html").render(message=message, slugs=sorted(competitions), current=current)
    return HTMLResponse(html, status_code=404)


def build_page_router(competitions: dict[str, ReportCompetition], default_slug: str) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    Slug = Annotated[str, Path(description="a served competition; any other is a 404 page")]
    ModelId = Annotated[str, Path(description="any model id; one the registry does not hold is a 404 page")]
    Page = Annotated[int, Query(ge=1, le=PAGE_MAX)]
    Status = Annotated[str | None, Query(pattern="^(PENDING|SUBMITTED|CLAIMABLE|PAID|SKIPPED)$")]

    def render(name: str, c: ReportCompetition, **context) -> HTMLResponse:
        html = templates.get_template(name).render(
            c=c, spec=c.spec, slugs=sorted(competitions), current=c.slug, default_slug=default_slug,
            score_name=c.spec.score_name or "score", direction=direction_words(c.spec),
            ranking_window=window_label(next(w.seconds for w in c.spec.leaderboard_windows if w.name == c.spec.ranking_key)),
            **context)
        return HTMLResponse(html)

    def competition_page(c: ReportCompetition, page: int, status: str | None) -> HTMLResponse:
        now = clock.now()
        stored = c.store.leaderboard()
        board = leaderboard_view(c, stored, c.spec.ranking_key, None)
        changes, previous = rank_changes(c, board)
        states = model_states(c, now)
        lifetime = c.reports.lifetime_rewards()
        scopes = [{"scope": s, "board": leaderboard_view(c, stored, c.spec.ranking_key, s.key)}
                  for s in c.spec.scopes] if len(c.spec.scopes) > 1 else []
        counts = c.reports.checkpoint_counts()
        total = counts.get(status, 0) if status else sum(counts.values())
        rows = c.reports.checkpoints(status=status, limit=PAGE_CHECKPOINTS, offset=(page - 1) * PAGE_CHECKPOINTS)
        trails = c.payouts.audit_trails([cp.id for cp in rows])
        checkpoints = [{**checkpoint_summary(cp, trails.get(cp.id, []), c.spec), "policies": cp.entries.get("policies", {})}
                       for cp in rows]
        series = model_score_series(c, None, None, None)
        order = [e["model_id"] for e in board["entries"]]
        base = "/" if c.slug == default_slug and not status and page == 1 else f"/page/{c.slug}"
        ranking_seconds = next(w.seconds for w in c.spec.leaderboard_windows if w.name == c.spec.ranking_key)
        return render(
            "competition.html", c, board=board, changes=changes, previous=previous, states=states, lifetime=lifetime,
            scopes=scopes, checkpoints=checkpoints, policies=policies_text(checkpoints), counts=counts,
            status=status, pager=page_links(f"/page/{c.slug}", {"status": status}, page, total),
            chart=chart_context(c, series, order), models=c.store.models(), base=base, now=now,
            ranking_hours=window_hours(c, board["as_of"], ranking_seconds),
            rules_fingerprint=c.rules_book.current.fingerprint if c.rules_book else None,
        )

    stylesheet = resources.files("crunch_assets.api").joinpath("static/page.css").read_bytes()

    @router.get("/static/page.css")
    def page_css() -> Response:
        return Response(stylesheet, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"})

    @router.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return competition_page(competitions[default_slug], 1, None)

    @router.get("/page/{slug}", response_class=HTMLResponse)
    def page(slug: Slug, page: Page = 1, status: Status = None) -> HTMLResponse:
        if slug not in competitions:
            return not_found(f"No competition {slug!r} is served here.", competitions)
        return competition_page(competitions[slug], page, status)

    @router.get("/page/{slug}/models/{model_id}", response_class=HTMLResponse)
    def explain(slug: Slug, model_id: ModelId, page: Page = 1) -> HTMLResponse:
        c = competitions.get(slug)
        if c is None:
            return not_found(f"No competition {slug!r} is served here.", competitions)
        now = clock.now()
        states = model_states(c, now) if MODEL_ID.match(model_id) else {}
        if model_id not in states:
            return not_found(f"No model {model_id!r} in {slug}. Its id is the file name of its model "
                             "(without .py), or the id the model orchestrator gave it.", competitions, slug)
        stored = c.store.leaderboard()
        board = leaderboard_view(c, stored, c.spec.ranking_key, None)
        entry = next((e for e in board["entries"] if e["model_id"] == model_id), None)
        raw = next((e for e in (stored[1] if stored else []) if e["model_id"] == model_id), None)
        period_counts = ((raw or {}).get("payout") or {}).get("breakdown")
        changes, previous = rank_changes(c, board)
        lifetime = c.reports.lifetime_rewards().get(model_id)
        failures = c.reports.predictions(model_id=model_id, status=PredictionReportStatus.FAILED, descending=True, limit=1)
        last_failure = None
        if failures:
            f = failures[0]
            last_failure = {"cycle_at": f.cycle_at, "scope_key": f.scope_key, "embargoed": f.embargoed,
                            "reason": None if f.embargoed else public_reason(f.status, f.status_reason)}
        rewards = []
        total = c.reports.checkpoint_counts()
        rows = c.reports.checkpoints(limit=PAGE_CHECKPOINTS, offset=(page - 1) * PAGE_CHECKPOINTS)
        trails = c.payouts.audit_trails([cp.id for cp in rows])
        for cp in rows:
            row = next((r for r in cp.entries.get("ranking", []) if r["model_id"] == model_id), None)
            if row is None:
                continue
            scored = c.reports.predictions(model_id=model_id, status=PredictionReportStatus.SCORED, start=cp.period_start,
                                           end=cp.period_end, limit=1)
            proof = None
            if scored:
                query = urlencode({"cycle_at": scored[0].cycle_at.isoformat(), "scope": scored[0].scope_key})
                proof = {"page": f"/page/{slug}/models/{quote(model_id, safe='')}/checkpoints/{cp.id}/proof?{query}",
                         "api": f"/competitions/{slug}/checkpoints/{cp.id}/models/{quote(model_id, safe='')}/proof?{query}",
                         "cycle_at": scored[0].cycle_at, "scope_key": scored[0].scope_key}
            rewards.append({"checkpoint": checkpoint_summary(cp, trails.get(cp.id, []), c.spec), "row": row,
                            "models": len(cp.entries["ranking"]),
                            "proof": proof, "policies": cp.entries.get("policies", {})})
        series = model_score_series(c, [model_id], None, None)
        contribution = contribution_page(c, model_id) if c.spec.metrics.enabled else None
        return render(
            "model.html", c, model=states[model_id]["model"], state=states[model_id], entry=entry, board=board,
            change=changes.get(model_id), previous=previous, lifetime=lifetime, last_failure=last_failure,
            period_counts=period_counts, benchmark=model_id in c.spec.payout.benchmark_models,
            rewards=rewards, policies=rewards[0]["policies"] if rewards else None,
            pager=page_links(f"/page/{slug}/models/{quote(model_id, safe='')}", {}, page, sum(total.values())),
            chart=chart_context(c, series, [model_id]), contribution=contribution,
        )

    @router.get("/page/{slug}/models/{model_id}/checkpoints/{checkpoint_id}/proof", response_class=HTMLResponse)
    def proof_page(slug: Slug, model_id: ModelId, checkpoint_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
                   cycle_at: Annotated[datetime, Query()], scope: Annotated[str | None, Query(max_length=200)] = None,
                   ) -> HTMLResponse:
        c = competitions.get(slug)
        if c is None:
            return not_found(f"No competition {slug!r} is served here.", competitions)
        cp = c.store.checkpoint_by_id(checkpoint_id)
        if cp is None or not MODEL_ID.match(model_id):
            return not_found(f"No checkpoint {checkpoint_id} with model {model_id!r} in {slug}.", competitions, slug)
        if cycle_at.tzinfo is None:
            return not_found("cycle_at needs its UTC offset, e.g. 2026-11-01T13:05:00+00:00.", competitions, slug)
        try:
            proof = inclusion_proof(c.store, cp, model_id, cycle_at.astimezone(timezone.utc), scope)
        except LookupError as error:
            return not_found(str(error), competitions, slug)
        return render("proof.html", c, model_id=model_id, checkpoint=checkpoint_summary(cp, c.payouts.audit_trail(cp.id), c.spec), proof=proof,
                      steps=worked_proof(proof), leaf_json=leaf_json(proof["leaf"], proof["commitment_scheme"]),
                      api=f"/competitions/{slug}/checkpoints/{cp.id}/models/{quote(model_id, safe='')}/proof?"
                          + urlencode({"cycle_at": cycle_at.isoformat(), **({"scope": scope} if scope else {})}))

    return router


def worked_proof(proof: dict) -> list[dict]:
    """The proof's steps with the hash each one makes: node = sha256(0x01 || left || right), the
    sibling on its side; the last one must be the checkpoint's root."""
    steps, current = [], proof["leaf_hash"]
    for step in proof["proof"]:
        left, right = (step["hash"], current) if step["side"] == "left" else (current, step["hash"])
        made = hashlib.sha256(b"\x01" + bytes.fromhex(left) + bytes.fromhex(right)).hexdigest()
        steps.append({"side": step["side"], "sibling": step["hash"], "left": left, "right": right, "made": made})
        current = made
    return steps
