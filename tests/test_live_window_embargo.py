"""The embargo on the real clock: a live window run (crunch_assets/defs/live_window/window.py) whose last cycles are
answered but not resolved when it stops. Dagster's record of the run (metadata, checks, log lines:
what the read-only UI shows) holds no model output, and the report API over real HTTP lists the
unresolved predictions without theirs."""

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import dagster as dg
import httpx
import sqlalchemy as sa

SLUG = "btc_updown"
HORIZON_SECONDS = 20
# A distinct answer per cycle (valid, and out of range: FAILED with a reason quoting it).
MODELS = {
    "distinct": "        return {'p_up': 0.13579246 + (self.latest['asof_ts'] % 997) * 1e-9}\n",
    "garbled": "        return {'p_up': 7.13579246 + (self.latest['asof_ts'] % 997) * 1e-9}\n",
}


def _definitions(spec, tmp_path):
    from competitions.btc_updown.definitions import RULES
    from crunch_assets.definitions import build_competition_definitions
    from crunch_assets.rules import CallableRules
    from resources.feeds.synthetic import SyntheticFeed

    models = tmp_path / "models"
    models.mkdir()
    for name, body in MODELS.items():
        (models / f"{name}.py").write_text(
            "from competitions.btc_updown.model_base import UpDownModel\n\n\nclass Model(UpDownModel):\n"
            "    def predict(self, subject, resolve_horizon_seconds, step_seconds):\n" + body)
    rules = CallableRules(**{**{n: getattr(RULES, n) for n in CallableRules.model_fields},
                             "input_builder": "tests.test_engine_shapes:tick_input"})
    return build_competition_definitions(
        spec, rules, models_dir=models, automation_running=False,
        feed=SyntheticFeed(kind="tick", granularity_seconds=0, tick_interval_seconds=5),
    )


def test_a_live_window_records_no_output_and_serves_none_before_resolution(clean_database, tmp_path):
    from competitions.btc_updown.definitions import SPEC
    from crunch_assets.api import ReportCompetition, create_app
    from resources.payout_accounts import PayoutAccounts
    from crunch_assets.spec import Scope
    from dagster._serdes import serialize_value
    from resources.store.database import CrunchDatabase, engine_for
    from resources.clock import TestClock, use_clock
    from tests.api.conftest import LiveServer, auth

    # on a test clock two minutes into a past hour (Dagster lists partitions up to the wall time): the
    # run's waits advance the clock at once
    window = datetime(2026, 11, 5, 13, tzinfo=timezone.utc)
    now = window + timedelta(minutes=2, seconds=3)
    # a cycle every 10 s resolving 20 s later, no quarantine of the garbled model; a short catch-up
    spec = replace(SPEC, start=window, scopes=(Scope("BTC", HORIZON_SECONDS, 10),), max_price_staleness_seconds=5,
                   history_seconds=60, quarantine_after_failures=0, max_catchup_seconds=60)
    defs = _definitions(spec, tmp_path)
    stop = now + timedelta(seconds=30)
    instance = dg.DagsterInstance.ephemeral()
    with use_clock(TestClock(now)) as clock:
        result = defs.get_job_def(f"{SLUG}__live_job").execute_in_process(
            run_config={"ops": {f"{SLUG}__live_window": {"config": {"window_start": window.isoformat(), "stop_at": stop.isoformat()}}}},
            instance=instance, resources=defs.resources,
        )
    assert clock.now() >= stop  # the run went on to its stop on the clock
    assert result.success

    engine = engine_for()
    with engine.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT p.id, p.model_id, p.status_reason, p.inference_output, i.status AS cycle_status "
            "FROM crunch.predictions p JOIN crunch.inputs i ON i.id = p.input_id")).fetchall()
    unresolved = {r.id for r in rows if r.cycle_status == "RECEIVED"}
    assert unresolved and len(unresolved) < len(rows)  # the run stopped with answered, unresolved cycles

    def answer(row) -> str:
        return json.dumps(row.inference_output["p_up"]) if row.model_id == "distinct" else row.status_reason.rsplit("got ", 1)[1]

    # the answers as text, where long enough (e.g. 0.135792634) never to be there by chance
    answers = {r.id: text for r in rows if len(text := answer(r)) >= 9}
    assert len(answers) >= 0.8 * len(rows) and set(answers) & unresolved
    recorded = [serialize_value(entry) for entry in instance.all_logs(result.run_id)]
    assert any("window_status_counts" in text for text in recorded)  # the live run's metadata, read here
    # no answer at all, resolved or not, is in Dagster's record of the run
    assert not [text for text in answers.values() if any(text in entry for entry in recorded)]

    competition = ReportCompetition(spec, PayoutAccounts(), CrunchDatabase())
    app = create_app([competition], api_token="operator-token-0123456789", read_env=False)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        served = client.get("/competitions/btc_updown/predictions", params={"limit": 1000}).json()["predictions"]
        unlocked = client.get("/competitions/btc_updown/predictions", params={"limit": 1000},
                              headers=auth("operator-token-0123456789")).json()["predictions"]
    assert {p["id"] for p in served} == {r.id for r in rows}
    assert {p["id"] for p in served if p["embargoed"]} == unresolved
    body = json.dumps(served)
    assert not [text for i, text in answers.items() if i in unresolved and text in body]
    assert all(text in body for i, text in answers.items() if i not in unresolved)  # resolved answers are open
    assert all(text in json.dumps(unlocked) for text in answers.values())
