"""Every read of the report API over real HTTP against the replayed store: the numbers served are
the stored ones (recomputed from the database here), pages walk every row exactly once, exports
stream the same rows, and every filter is backed by an index."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from crunch_assets import merkle
from tests.api.conftest import COMPUTE_PUBKEY, CRUNCH_PUBKEY, END, START

MODELS = ["gaussian_density", "mean_reversion", "trend_following"]


@pytest.fixture(scope="module")
def db(module_database_url):
    engine = sa.create_engine(module_database_url)
    yield engine
    engine.dispose()


def _checkpoints(db) -> list:
    with db.connect() as connection:
        return connection.execute(sa.text("SELECT * FROM crunch.checkpoints ORDER BY period_start")).fetchall()


def test_health_competitions_and_lag(read_api):
    _, client = read_api
    assert client.get("/health").json() == {"status": "ok", "database": "reachable", "competitions": ["btc_updown"]}
    assert client.get("/competitions").json()["default"] == "btc_updown"
    lag = client.get("/competitions/btc_updown/lag").json()
    assert datetime.fromisoformat(lag["last_cycle"]["BTC-60-60"]["at"]) == END - timedelta(minutes=1)
    assert datetime.fromisoformat(lag["last_scored_cycle"]["at"]) == END - timedelta(minutes=1)
    assert datetime.fromisoformat(lag["last_checkpoint_end"]["at"]) == END.replace(hour=0)
    assert lag["last_scored_cycle"]["behind_seconds"] > 0
    assert client.get("/competitions/unknown_comp/lag").status_code == 404


def test_leaderboard_current_as_of_window_and_scope(read_api, db):
    _, client = read_api
    with db.connect() as connection:
        stored = connection.execute(sa.text(
            "SELECT as_of, entries FROM crunch.leaderboards ORDER BY as_of")).fetchall()
    current = client.get("/competitions/btc_updown/leaderboard").json()
    assert datetime.fromisoformat(current["as_of"]) == stored[-1].as_of
    by_model = {e["model_id"]: e for e in stored[-1].entries}
    assert [e["model_id"] for e in current["entries"]] == [e["model_id"] for e in stored[-1].entries]
    for entry in current["entries"]:
        stored_entry = by_model[entry["model_id"]]
        assert entry["value"] == stored_entry["score_recent"]
        assert entry["windows"] == {w: stored_entry[w] for w in ("score_recent", "score_steady", "score_anchor")}
        assert entry["coverage"]["score_recent"] == stored_entry["score_recent_coverage"] == 1.0
        assert entry["payout"]["reward_pct"] == stored_entry["payout"]["reward_pct"]
    # as of the first day's end: the first leaderboard
    first = client.get("/competitions/btc_updown/leaderboard", params={"as_of": (stored[0].as_of + timedelta(minutes=5)).isoformat()}).json()
    assert datetime.fromisoformat(first["as_of"]) == stored[0].as_of
    assert client.get("/competitions/btc_updown/leaderboard", params={"as_of": "2020-01-01T00:00:00+00:00"}).json()["entries"] == []
    # another window ranks by that window's values
    steady = client.get("/competitions/btc_updown/leaderboard", params={"window": "score_steady"}).json()["entries"]
    values = [e["value"] for e in steady]
    assert values == sorted(values, reverse=True) and values == [by_model[e["model_id"]]["score_steady"] for e in steady]
    scoped = client.get("/competitions/btc_updown/leaderboard", params={"scope": "BTC-60-60"}).json()["entries"]
    assert {e["model_id"]: e["value"] for e in scoped} == {
        m: by_model[m]["scopes"]["BTC-60-60"]["score_recent"] for m in by_model}
    assert client.get("/competitions/btc_updown/leaderboard", params={"window": "score_forever"}).status_code == 422
    assert client.get("/competitions/btc_updown/leaderboard", params={"scope": "ETH-1-1"}).status_code == 422
    assert client.get("/competitions/btc_updown/leaderboard", params={"as_of": "2025-01-08T00:00:00"}).status_code == 422  # naive


def test_models_global_params_and_schema(read_api):
    _, client = read_api
    models = client.get("/competitions/btc_updown/models").json()["models"]
    assert sorted(m["model_id"] for m in models) == MODELS
    assert sorted(m["cruncher_index"] for m in models) == [0, 1, 2]
    board = {e["model_id"]: e for e in client.get("/competitions/btc_updown/leaderboard").json()["entries"]}
    for row in client.get("/competitions/btc_updown/models/global").json()["models"]:
        assert row["score_recent"] == board[row["model_id"]]["windows"]["score_recent"]
    params = client.get("/competitions/btc_updown/models/params").json()
    assert params["scopes"][0]["scope_key"] == "BTC-60-60" and params["scopes"][0]["resolve_horizon_seconds"] == 60
    schema = client.get("/competitions/btc_updown/schema").json()
    assert [c["key"] for c in schema["leaderboard_columns"] if c.get("ranking")] == ["score_recent"]
    assert client.get("/competitions/btc_updown/schema/leaderboard-columns").json() == schema["leaderboard_columns"]
    assert {w["id"] for w in client.get("/competitions/btc_updown/schema/metrics-widgets").json()} == {
        "score_over_time", "reward_split", "coverage"}


def test_predictions_pages_walk_every_row_once(read_api, db):
    _, client = read_api
    start, end = START + timedelta(hours=5), START + timedelta(hours=7)
    seen, cursor, pages = [], None, 0
    while True:
        params = {"model_id": "mean_reversion", "start": start.isoformat(), "end": end.isoformat(), "limit": 50}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/competitions/btc_updown/predictions", params=params).json()
        seen += page["predictions"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    with db.connect() as connection:
        expected = connection.execute(sa.text(
            "SELECT p.id, s.value FROM crunch.predictions p JOIN crunch.scores s ON s.prediction_id = p.id "
            "WHERE p.model_id = 'mean_reversion' AND p.cycle_at >= :s AND p.cycle_at < :e ORDER BY p.cycle_at"),
            {"s": start, "e": end}).fetchall()
    assert [p["id"] for p in seen] == [row.id for row in expected] and len(seen) == 120 and pages == 3
    assert [p["score"]["value"] for p in seen] == [row.value for row in expected]
    assert {p["status"] for p in seen} == {"SCORED"} and all("input" not in p for p in seen)
    newest = client.get("/competitions/btc_updown/predictions", params={"order": "desc", "limit": 3}).json()["predictions"]
    assert [datetime.fromisoformat(p["cycle_at"]) for p in newest] == [END - timedelta(minutes=1)] * 3
    assert client.get("/competitions/btc_updown/predictions", params={"status": "FAILED"}).json() == {"predictions": [], "next_cursor": None}
    assert client.get("/competitions/btc_updown/predictions", params={"status": "LOST"}).status_code == 422
    assert client.get("/competitions/btc_updown/predictions", params={"cursor": "not-a-cursor"}).status_code == 422
    assert client.get("/competitions/btc_updown/predictions", params={"limit": 1001}).status_code == 422
    assert client.get("/competitions/btc_updown/predictions", params={"start": end.isoformat(), "end": start.isoformat()}).status_code == 422


def test_snapshots_feeds_and_checkpoints(read_api, db):
    _, client = read_api
    snapshots = client.get("/competitions/btc_updown/snapshots", params={"model_id": "trend_following", "limit": 1000}).json()
    assert len(snapshots["snapshots"]) == 48 and snapshots["next_cursor"] is None  # 48 hours replayed
    feeds = client.get("/competitions/btc_updown/feeds").json()["feeds"]
    assert [(f["source"], f["subject"], f["kind"]) for f in feeds] == [("csv", "BTC", "candle")]
    listed = client.get("/competitions/btc_updown/checkpoints").json()["checkpoints"]
    stored = _checkpoints(db)
    assert [c["id"] for c in listed] == [row.id for row in reversed(stored)]
    assert client.get("/competitions/btc_updown/checkpoints", params={"status": "PAID"}).json()["checkpoints"] == []
    for row in stored:
        emission = client.get(f"/competitions/btc_updown/checkpoints/{row.id}/emission").json()
        assert emission == {key: row.entries[key] for key in
                            ("crunch", "cruncher_rewards", "compute_provider_rewards", "data_provider_rewards")}
        assert emission["crunch"] == CRUNCH_PUBKEY
        assert emission["compute_provider_rewards"] == [{"provider": COMPUTE_PUBKEY, "reward_pct": 1_000_000_000}]
    latest = client.get("/competitions/btc_updown/emissions/latest").json()
    assert latest["checkpoint_id"] == stored[-1].id and latest["cruncher_rewards"] == stored[-1].entries["cruncher_rewards"]
    assert client.get("/competitions/btc_updown/checkpoints/424242").status_code == 404
    assert client.get("/competitions/btc_updown/checkpoints/0").status_code == 422
    assert client.get(f"/competitions/btc_updown/checkpoints/{2**63}").status_code == 422


def test_cli_format_and_prizes(read_api, db):
    _, client = read_api
    row = _checkpoints(db)[0]
    cli = client.get(f"/competitions/btc_updown/checkpoints/{row.id}/emission/cli-format", params={"pool": 1_000_000}).json()
    by_model = {r["model_id"]: r["reward_pct"] for r in row.entries["ranking"]}
    assert cli["rewards"] == {m: pct / 10_000_000 for m, pct in by_model.items()}
    assert sorted(cli["rewards"].values()) == [25.0, 25.0, 50.0]
    assert cli["compute_provider_rewards"] == {COMPUTE_PUBKEY: 100.0} and cli["data_provider_rewards"] == {}
    assert {p["prize_id"]: p["amount"] for p in cli["prizes"]} == {
        f"{row.id}-{m}": pct // 1000 for m, pct in by_model.items()}
    assert sum(p["amount"] for p in cli["prizes"]) == 1_000_000
    odd = client.get(f"/competitions/btc_updown/checkpoints/{row.id}/emission/cli-format", params={"pool": 7}).json()["prizes"]
    assert sum(p["amount"] for p in odd) == 7  # exact: the rounding units go to the largest remainders
    assert "prizes" not in client.get(f"/competitions/btc_updown/checkpoints/{row.id}/emission/cli-format").json()
    assert client.get(f"/competitions/btc_updown/checkpoints/{row.id}/emission/cli-format", params={"pool": 0}).status_code == 422


def test_breakdown_and_merkle_proof(read_api, db):
    _, client = read_api
    row = _checkpoints(db)[1]
    for ranked in row.entries["ranking"]:
        breakdown = client.get(f"/competitions/btc_updown/checkpoints/{row.id}/models/{ranked['model_id']}/breakdown").json()
        assert breakdown["breakdown"] == ranked["breakdown"] and breakdown["reward_pct"] == ranked["reward_pct"]
        assert breakdown["breakdown"]["scored"] == 24 * 60
    cycle = row.period_start + timedelta(hours=3, minutes=17)
    proof = client.get(f"/competitions/btc_updown/checkpoints/{row.id}/models/mean_reversion/proof",
                       params={"cycle_at": cycle.isoformat()}).json()
    assert proof["verified"] is True and proof["merkle_root"] == row.merkle_root
    steps = [merkle.ProofStep(s["side"], s["hash"]) for s in proof["proof"]]
    assert proof["commitment_scheme"] == merkle.PORTABLE_SCHEME
    leaf = merkle.sha256_hex(b"\x00" + merkle.canonical(proof["leaf"]))  # RFC 8785, from the served fields
    assert leaf == proof["leaf_hash"] and merkle.verify_proof(leaf, steps, row.merkle_root)
    assert client.get(f"/competitions/btc_updown/checkpoints/{row.id}/models/nobody/breakdown").status_code == 404
    outside = client.get(f"/competitions/btc_updown/checkpoints/{row.id}/models/mean_reversion/proof",
                         params={"cycle_at": START.isoformat()})
    assert outside.status_code == 404


def test_exports_stream_the_same_rows_as_csv_and_parquet(read_api, db):
    _, client = read_api
    start, end = START, START + timedelta(hours=30)  # more than one page (1000 rows)
    params = {"start": start.isoformat(), "end": end.isoformat()}
    with db.connect() as connection:
        expected = connection.execute(sa.text(
            "SELECT p.cycle_at, s.value FROM crunch.predictions p JOIN crunch.scores s ON s.prediction_id = p.id "
            "WHERE p.model_id = 'gaussian_density' AND p.cycle_at >= :s AND p.cycle_at < :e ORDER BY p.cycle_at"),
            {"s": start, "e": end}).fetchall()
    assert len(expected) == 30 * 60
    with client.stream("GET", "/competitions/btc_updown/models/gaussian_density/export", params=params) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
        text = "".join(response.iter_text())
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(datetime.fromisoformat(r["cycle_at"]), float(r["score_value"])) for r in rows] == [tuple(e) for e in expected]
    parquet = client.get("/competitions/btc_updown/models/gaussian_density/export", params={**params, "format": "parquet"})
    assert parquet.status_code == 200
    table = pq.read_table(io.BytesIO(parquet.content))
    assert table.num_rows == len(expected) and pq.ParquetFile(io.BytesIO(parquet.content)).num_row_groups == 2
    assert table.column("score_value").to_pylist() == [e.value for e in expected]
    assert client.get("/competitions/btc_updown/models/gaussian_density/export",
                      params={"start": start.isoformat(), "end": (start + timedelta(days=40)).isoformat()}).status_code == 422
    assert client.get("/competitions/btc_updown/models/nobody/export", params=params).status_code == 404


def test_score_series_follows_the_snapshots(read_api, db):
    _, client = read_api
    series = client.get("/competitions/btc_updown/models/mean_reversion/scores").json()
    points = series["series"]["mean_reversion"]
    assert len(points) == 48  # the last 72 hours of data hold the 48 replayed hours
    with db.connect() as connection:
        hourly = dict(connection.execute(sa.text(
            "SELECT period_start, value_sum / prediction_count FROM crunch.snapshots WHERE model_id = 'mean_reversion'"
        )).fetchall())
    for point in points:
        assert point["value"] == pytest.approx(hourly[datetime.fromisoformat(point["hour"])], abs=1e-12)


QUERIES = {
    "model filter": "SELECT p.id FROM crunch.predictions p WHERE p.competition = 'btc_updown' AND p.model_id = 'x' "
                    "AND p.cycle_at >= now() - interval '1 day' ORDER BY p.cycle_at, p.id LIMIT 100",
    "scope filter": "SELECT p.id FROM crunch.predictions p WHERE p.competition = 'btc_updown' AND p.scope_key = 'x' "
                    "AND p.cycle_at >= now() - interval '1 day' ORDER BY p.cycle_at, p.id LIMIT 100",
    "status filter": "SELECT p.id FROM crunch.predictions p WHERE p.competition = 'btc_updown' AND p.status = 'FAILED' "
                     "ORDER BY p.cycle_at, p.id LIMIT 100",
    "time range": "SELECT p.id FROM crunch.predictions p WHERE p.competition = 'btc_updown' "
                  "AND p.cycle_at >= '2025-01-07T05:00Z' AND p.cycle_at < '2025-01-07T06:00Z' LIMIT 100",
    "snapshots by model": "SELECT id FROM crunch.snapshots WHERE competition = 'btc_updown' AND model_id = 'x' "
                          "ORDER BY period_start, id LIMIT 100",
    "latest leaderboard": "SELECT entries FROM crunch.leaderboards WHERE competition = 'btc_updown' "
                          "ORDER BY as_of DESC LIMIT 1",
    "audit": "SELECT * FROM crunch.checkpoint_audit WHERE checkpoint_id = 1 ORDER BY id",
    # the reference's shapes (crunch_assets/api/reference.py) and the page
    "models of a list, newest": "SELECT p.id FROM crunch.predictions p WHERE p.competition = 'btc_updown' "
                                "AND p.model_id IN ('x', 'y') AND p.cycle_at >= '2025-01-07T05:00Z' "
                                "AND p.cycle_at < '2025-01-08T05:00Z' ORDER BY p.cycle_at DESC, p.id DESC LIMIT 1000",
    "leaderboards in a range": "SELECT as_of, entries FROM crunch.leaderboards WHERE competition = 'btc_updown' "
                               "AND as_of >= '2025-01-07T00:00Z' AND as_of < '2025-01-14T00:00Z' ORDER BY as_of LIMIT 2976",
    "feed tail of a stream": "SELECT ts_event, values FROM crunch.feed_records WHERE source = 'csv' AND subject = 'BTC' "
                             "AND kind = 'candle' AND granularity = '1m' ORDER BY ts_event DESC LIMIT 20",
    "checkpoints of a competition": "SELECT entries FROM crunch.checkpoints WHERE competition = 'btc_updown'",
}


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_every_report_filter_has_an_index(db, name):
    with db.connect() as connection:
        connection.execute(sa.text("ANALYZE"))
        connection.execute(sa.text("SET enable_seqscan = off"))  # small tables: ask whether an index *can* serve it
        plan = "\n".join(row[0] for row in connection.execute(sa.text("EXPLAIN " + QUERIES[name])))
    assert "Seq Scan" not in plan and "Index" in plan, plan


def test_only_declared_input_keys_are_served(module_database_url, db):
    from dataclasses import replace

    import httpx

    from crunch_assets.api import ReportCompetition, create_app
    from resources.store.database import CrunchDatabase
    from tests.api.conftest import LiveServer, accounts, replay_spec

    with db.connect() as connection:
        raw = connection.execute(sa.text("SELECT raw_data FROM crunch.inputs ORDER BY cycle_at LIMIT 1")).scalar_one()
    assert {"asof_ts", "candles_1m"} <= set(raw)  # what is stored: the whole model input
    spec = replace(replay_spec(), public_input_keys=("asof_ts",))
    app = create_app([ReportCompetition(spec, accounts(), CrunchDatabase(url=module_database_url))], read_env=False)
    with LiveServer(app) as server, httpx.Client(base_url=server.url) as client:
        shown = client.get("/competitions/btc_updown/predictions", params={"limit": 5}).json()["predictions"]
    assert len(shown) == 5
    assert all(p["input"] == {"asof_ts": raw["asof_ts"]} for p in shown[:3])  # the first cycle's three models
