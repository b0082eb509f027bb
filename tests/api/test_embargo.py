"""The output embargo over real HTTP: an hour in progress on real BTC/USD candles, run the way the
sensors run it live (predictions and scores up to an `as_of` instant) with a 30-minute horizon, so
that the last half hour of cycles is answered but not resolved. An open read shows that those
predictions exist, their status and timing, never their output (nor the reason a FAILED one failed,
which quotes the answer); once the cycles are scored their outputs appear; an export leaves the
unresolved ones out; the operator's token unlocks everything.

Issue: `GET /reports/predictions` served the leader's live forecast to anyone, with no token."""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from tests.api.conftest import TOKEN, _admin, accounts, auth, database_named

START = datetime(2025, 1, 7, 1, tzinfo=timezone.utc)
HORIZON = timedelta(minutes=30)
AS_OF = START + timedelta(hours=1, minutes=30)  # cycles 01:00 .. 02:30 run; 01:00 .. 02:00 resolved
LATER = START + timedelta(hours=2)  # every cycle run so far resolved
DATABASE = "crunch_embargo"
QUICKSTARTERS = Path(__file__).resolve().parents[2] / "competitions/btc_updown/models"
# Answers out of range on every cycle: FAILED, and the validator's reason quotes the answer.
GARBLED_MODEL = '''from competitions.btc_updown.model_base import UpDownModel


class Garbled(UpDownModel):
    def predict(self, subject, resolve_horizon_seconds, step_seconds):
        return {"p_up": 7.123456 + (self.latest["asof_ts"] % 997) * 1e-6}  # a distinct answer per cycle
'''
MODELS = ["garbled", "gaussian_density", "mean_reversion", "trend_following"]
RANGE = {"start": START.isoformat(), "end": (START + timedelta(hours=2)).isoformat()}


def _spec():
    from competitions.btc_updown.definitions import SPEC
    from crunch_assets.spec import DAY_SECONDS, Scope

    return replace(SPEC, start=START, scopes=(Scope("BTC", int(HORIZON.total_seconds()), 60),),
                   checkpoint_interval_seconds=DAY_SECONDS, quarantine_after_failures=0)


class LiveHour:
    """The competition's definitions over the real candles, on a database of its own."""

    def __init__(self, url: str, btc_csv: Path, models_dir: Path):
        import dagster as dg

        from competitions.btc_updown.definitions import build_definitions
        from crunch_assets.keys import ChainKeys
        from resources.feeds.csv_replay import CsvReplayFeed
        from resources.model_runners.local import LocalModelRunner
        from resources.store.database import CrunchDatabase

        self.url, self.spec = url, _spec()
        self.instance = dg.DagsterInstance.ephemeral()  # keeps every run's event log, for the metadata test
        self.keys = ChainKeys.for_slug(self.spec.slug)
        self.defs = build_definitions(
            spec=self.spec, feed=CsvReplayFeed(path=str(btc_csv), source="csv"), automation_running=False,
            database=CrunchDatabase(url=url), payout_accounts=accounts(),
            model_runner=LocalModelRunner(models_dir=str(models_dir), call_timeout_seconds=10.0),
        )

    def hour(self, instant: datetime) -> str:
        return instant.strftime("%Y-%m-%d-%H:00")

    def materialize(self, names: list[str], first: datetime, last: datetime, as_of: datetime | None = None):
        from crunch_assets.keys import ChainKeys
        from crunch_assets.replay import materialize_range
        from crunch_assets.run_config import as_of_run_config

        keys = [getattr(self.keys, name) for name in names]
        config = as_of_run_config([ChainKeys.op_name(k) for k in keys], as_of) if as_of else None
        result = materialize_range(self.defs, keys, self.hour(first), self.hour(last), self.instance, run_config=config)
        assert result.success
        return result

    def stored(self) -> dict[int, tuple]:
        """prediction id -> (cycle_at, model_id, status as made, status_reason, inference_output)."""
        engine = sa.create_engine(self.url)
        with engine.connect() as connection:
            rows = connection.execute(sa.text(
                "SELECT id, cycle_at, model_id, status, status_reason, inference_output FROM crunch.predictions")).fetchall()
        engine.dispose()
        return {r.id: tuple(r)[1:] for r in rows}


@pytest.fixture(scope="module")
def live_hour(database_url, btc_csv, tmp_path_factory):
    from resources.store.database import dispose_engines

    admin = _admin(database_url)
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
        connection.execute(sa.text(f"CREATE DATABASE {DATABASE}"))
    models = tmp_path_factory.mktemp("models")
    for model in QUICKSTARTERS.glob("*.py"):
        shutil.copy(model, models / model.name)
    (models / "garbled.py").write_text(GARBLED_MODEL)
    live = LiveHour(database_named(database_url, DATABASE), btc_csv, models)
    live.materialize(["feed_records"], START, START + timedelta(hours=2))
    live.materialize(["predictions"], START, START + timedelta(hours=1), as_of=AS_OF)
    live.materialize(["scores"], START, START + timedelta(hours=1), as_of=AS_OF)
    yield live
    dispose_engines()
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
    admin.dispose()


def _serve(url: str, token: str | None = TOKEN):
    from crunch_assets.api import ReportCompetition, create_app
    from resources.store.database import CrunchDatabase
    from tests.api.conftest import LiveServer

    app = create_app([ReportCompetition(_spec(), accounts(), CrunchDatabase(url=url))], api_token=token,
                     read_env=False)
    return LiveServer(app)


def _all_predictions(client: httpx.Client, prefix: str, headers: dict | None = None, **params) -> list[dict]:
    seen, cursor = [], None
    while True:
        query = {**RANGE, "limit": 1000, **params, **({"cursor": cursor} if cursor else {})}
        response = client.get(f"{prefix}/predictions", params=query, headers=headers or {})
        assert response.status_code == 200, response.text
        page = response.json()
        seen += page["predictions"]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


def _resolved(cycle_at: datetime, as_of: datetime) -> bool:
    return cycle_at + HORIZON <= as_of


def test_an_unresolved_output_is_absent_from_open_reads_and_the_token_unlocks_it(live_hour):
    stored = live_hour.stored()
    unresolved = {pid for pid, row in stored.items() if not _resolved(row[0], AS_OF)}
    assert len(stored) == 91 * 4 and len(unresolved) == 30 * 4  # 01:00 .. 02:30; 02:01 .. 02:30 unresolved
    # what the store holds: the live forecasts (the store keeps everything; the read withholds it)
    assert all(stored[pid][4] is not None for pid in unresolved if stored[pid][1] != "garbled")
    assert all("got 7.12" in stored[pid][3] for pid in unresolved if stored[pid][1] == "garbled")
    with _serve(live_hour.url) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        for prefix in ("/competitions/btc_updown",):
            served = {p["id"]: p for p in _all_predictions(client, prefix)}
            assert set(served) == set(stored)  # every prediction is listed, with its status and timing
            for pid, p in served.items():
                cycle_at, model_id, made, reason, output = stored[pid]
                assert datetime.fromisoformat(p["cycle_at"]) == cycle_at
                assert datetime.fromisoformat(p["resolvable_at"]) == cycle_at + HORIZON
                if pid in unresolved:
                    assert p["embargoed"] is True and p["inference_output"] is None and p["score"] is None
                    assert p["status"] == ("FAILED" if model_id == "garbled" else "PENDING")
                    assert p["status_reason"] is None  # "invalid output: p_up ... got 7.12..." quotes the answer
                else:
                    assert p["embargoed"] is False and p["inference_output"] == output and p["score"] is not None
                    assert p["status_reason"] == reason
            text = json.dumps(list(served.values()))
            assert not [n for n in unresolved_needles(stored) if n in text]
            pending = _all_predictions(client, prefix, status="PENDING")
            assert len(pending) == 30 * 3 and all(p["embargoed"] and p["inference_output"] is None for p in pending)

            # the operator's token unlocks every output on the same read
            unlocked = {p["id"]: p for p in _all_predictions(client, prefix, headers=auth())}
            assert {pid: p["inference_output"] for pid, p in unlocked.items()} == {pid: row[4] for pid, row in stored.items()}
            assert {pid: p["status_reason"] for pid, p in unlocked.items()} == {pid: row[3] for pid, row in stored.items()}
            assert not any(p["embargoed"] for p in unlocked.values())
            # a wrong token is refused, never answered with the open view as if it were right
            wrong = client.get(f"{prefix}/predictions", params=RANGE, headers=auth("not-the-token"))
            assert wrong.status_code == 403
        # the reference's shape (/reports/predictions) has scores only: an unresolved row has none
        reference = client.get("/reports/predictions", params={**RANGE, "limit": 1000}).json()
        assert len(reference) == len(stored)
        late = [row for row in reference if datetime.fromisoformat(row["performed_at"] + "+00:00") + HORIZON > AS_OF]
        assert len(late) == len(unresolved) and all(row["score_value"] is None for row in late)
        assert not [n for n in unresolved_needles(stored) if n in json.dumps(reference)]
    with _serve(live_hour.url, token=None) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        # no operator token configured: reads stay open and embargoed; a token cannot unlock anything
        assert client.get("/competitions/btc_updown/predictions", params=RANGE, headers=auth()).status_code == 403
        assert sum(p["embargoed"] for p in _all_predictions(client, "/competitions/btc_updown")) == len(unresolved)


def output_text(row: tuple) -> str:
    """The unresolved prediction's content as it would appear in a JSON body."""
    _, model_id, _, reason, output = row
    if model_id == "garbled":
        return reason.rsplit("got ", 1)[1]
    return json.dumps(output["p_up"])


def unresolved_needles(stored: dict[int, tuple]) -> set[str]:
    """The unresolved answers as text, long enough (e.g. 0.37126220372047036) not to turn up by chance."""
    return {text for text in (output_text(row) for row in stored.values() if not _resolved(row[0], AS_OF))
            if len(text) >= 8}


def _export(client: httpx.Client, model_id: str, fmt: str, headers: dict | None = None) -> list[dict]:
    response = client.get(f"/competitions/btc_updown/models/{model_id}/export", params={**RANGE, "format": fmt}, headers=headers or {})
    assert response.status_code == 200, response.text
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(response.text)))
    return pq.read_table(io.BytesIO(response.content)).to_pylist()


def _cycles(rows: list[dict]) -> list[datetime]:
    return [r["cycle_at"] if isinstance(r["cycle_at"], datetime) else datetime.fromisoformat(r["cycle_at"]) for r in rows]


def test_no_run_of_the_hour_records_an_unresolved_output_in_dagster(live_hour):
    """Dagster's UI is the operator's, but the read-only UI shows the same metadata and run logs:
    nothing the assets record (materialization metadata, check metadata, log lines) may carry an
    unresolved prediction's output, nor the FAILED reason that quotes it."""
    from dagster._serdes import serialize_value

    stored = live_hour.stored()
    needles = unresolved_needles(stored)
    assert len(needles) > 100  # nearly one distinct answer per model and cycle (120)
    runs = live_hour.instance.get_runs()
    assert len(runs) == 3  # the feed, the predictions and the scores of the hour
    recorded = [serialize_value(entry) for run in runs for entry in live_hour.instance.all_logs(run.run_id)]
    assert any("predictions_made" in text for text in recorded)  # the metadata is there, and read here
    assert not [n for n in needles if any(n in text for text in recorded)]


def test_the_page_and_the_score_series_show_resolved_cycles_only(live_hour):
    from crunch_assets.keys import ChainKeys
    from crunch_assets.replay import materialize_range
    from crunch_assets.run_config import as_of_run_config

    keys = [live_hour.keys.snapshots, live_hour.keys.leaderboard]
    day = START.strftime("%Y-%m-%d")
    assert materialize_range(live_hour.defs, keys, day, day,
                             run_config=as_of_run_config([ChainKeys.op_name(k) for k in keys], AS_OF)).success
    stored = live_hour.stored()
    needles = unresolved_needles(stored)
    with _serve(live_hour.url) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        pages = [client.get("/"), client.get("/page/btc_updown")]
        pages += [client.get(f"/page/btc_updown/models/{m}") for m in MODELS]
        assert all(page.status_code == 200 for page in pages)
        assert "leaderboard" in pages[0].text
        for model_id in MODELS:
            series = client.get(f"/competitions/btc_updown/models/{model_id}/scores").json()["series"]
            assert [p["hour"][:16] for p in series[model_id]] == ["2025-01-07T01:00", "2025-01-07T02:00"]
    assert not [n for n in needles if any(n in page.text for page in pages)]
    engine = sa.create_engine(live_hour.url)
    with engine.connect() as connection:
        counts = connection.execute(sa.text(
            "SELECT model_id, prediction_count FROM crunch.snapshots WHERE period_start = :hour"),
            {"hour": START + timedelta(hours=1)}).fetchall()
    engine.dispose()
    # the hour in progress is summarised over its one resolved cycle (02:00), never the 30 unresolved
    assert sorted(counts) == [(m, 1) for m in sorted(MODELS)]


def test_an_export_leaves_unresolved_cycles_out_until_they_are_scored(live_hour):
    resolved_cycles = [START + timedelta(minutes=m) for m in range(61)]  # 01:00 .. 02:00
    every_cycle = [START + timedelta(minutes=m) for m in range(91)]  # 01:00 .. 02:30
    with _serve(live_hour.url) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        for model_id in MODELS:
            for fmt in ("csv", "parquet"):
                assert _cycles(_export(client, model_id, fmt)) == resolved_cycles, (model_id, fmt)
                assert _cycles(_export(client, model_id, fmt, auth())) == every_cycle, (model_id, fmt)
        assert client.get("/competitions/btc_updown/models/mean_reversion/export", params=RANGE, headers=auth("wrong")).status_code == 403

        # the hour goes on: the next run scores up to 02:00 + 30 min; every output so far is open
        live_hour.materialize(["scores"], START, START + timedelta(hours=1), as_of=LATER)
        stored = live_hour.stored()
        served = {p["id"]: p for p in _all_predictions(client, "/competitions/btc_updown")}
        assert not any(p["embargoed"] for p in served.values())
        assert {pid: p["inference_output"] for pid, p in served.items()} == {pid: row[4] for pid, row in stored.items()}
        assert {pid: p["status_reason"] for pid, p in served.items()} == {pid: row[3] for pid, row in stored.items()}
        for fmt in ("csv", "parquet"):
            rows = _export(client, "trend_following", fmt)
            assert _cycles(rows) == every_cycle
            outputs = {(c, json.dumps(o, sort_keys=True)) for c, _, _, _, o in
                       (stored[pid] for pid in stored if stored[pid][1] == "trend_following")}
            assert {(c, r["inference_output"]) for c, r in zip(_cycles(rows), rows)} == outputs
