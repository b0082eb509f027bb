"""The reference webapp's contract: what CrunchDAO's coordinator webapp reads from a node, served by
us on /reports (the default competition) and /competitions/{slug}/reports.

Every answer is validated against the JSON Schema that ts-json-schema-generator made from the
webapp's TypeScript types (tests/api/reference/webapp-types.ts, quoted from the webapp; regenerate
with tests/api/reference/generate-schema.sh), and a checkpoint is settled the way the webapp does
it (`entries[0]` and `meta.ranking[reward.cruncher_index]`, apps/platform/.../useSubmitNodeCheckpoint.tsx
and settleCheckpointDialog.tsx, transcribed below): the prizes must pay the models our checkpoint pays.
Before: /reports/checkpoints answered {"checkpoints": [...]} with integer ids and the emission
spread over the top level, so the webapp found no `entries[0]` and settled nothing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import jsonschema_rs
import pytest

from tests.api.conftest import CRUNCH_PUBKEY, END, START, TOKEN, LiveServer, auth, report_competition, serve

SCHEMA = json.loads((Path(__file__).parent / "reference" / "reference-schema.json").read_text())
FRAC64_MULTIPLIER = 1_000_000_000  # apps/platform/src/modules/checkpoint/domain/constants.ts


def validate(instance, type_name: str) -> None:
    """Raises jsonschema_rs.ValidationError when `instance` is not a `type_name` of webapp-types.ts."""
    jsonschema_rs.validator_for({"$ref": f"#/definitions/{type_name}", "definitions": SCHEMA["definitions"]}).validate(instance)


def is_valid(instance, type_name: str) -> bool:
    try:
        validate(instance, type_name)
    except jsonschema_rs.ValidationError:
        return False
    return True


# --- the webapp's settlement, transcribed from TypeScript ----------------------------------------

def node_checkpoint_to_prizes(checkpoint: dict, payout_amount: int) -> list[dict]:
    """useSubmitNodeCheckpoint.tsx's nodeCheckpointToPrizes: what goes on chain."""
    emission = (checkpoint.get("entries") or [None])[0]
    if not emission:
        return []
    ranking = checkpoint["meta"].get("ranking") or []
    timestamp = math.floor(datetime.fromisoformat(checkpoint["period_end"]).timestamp())
    prizes = []
    for reward in emission["cruncher_rewards"]:
        pct = reward["reward_pct"] / FRAC64_MULTIPLIER
        model_id = ranking[reward["cruncher_index"]]["model_id"] if reward["cruncher_index"] < len(ranking) \
            else str(reward["cruncher_index"])
        prizes.append({"prizeId": f"{checkpoint['id']}-{model_id}", "timestamp": timestamp, "model": model_id,
                       "prize": math.floor(payout_amount * pct + 0.5)})  # Math.round
    return prizes


def build_prize_rows(checkpoint: dict, payout_amount: int) -> list[dict]:
    """settleCheckpointDialog.tsx's buildPrizeRows: what the operator reviews before signing."""
    emission = (checkpoint.get("entries") or [None])[0]
    if not emission:
        return []
    ranking = checkpoint["meta"].get("ranking") or []
    rows = []
    for reward in emission["cruncher_rewards"]:
        entry = ranking[reward["cruncher_index"]] if reward["cruncher_index"] < len(ranking) else None
        pct = reward["reward_pct"] / FRAC64_MULTIPLIER
        rows.append({"rank": entry.get("rank") if entry else reward["cruncher_index"] + 1,
                     "model": (entry.get("model_name") or entry.get("model_id")) if entry else f"#{reward['cruncher_index']}",
                     "cruncher": (entry or {}).get("cruncher_name") or "-", "share": f"{pct * 100:.2f}%"})
    return rows


# --- shapes --------------------------------------------------------------------------------------

READS = {
    "/checkpoints": "CheckpointsResponse",
    "/checkpoints/latest": "CheckpointResponse",
    "/leaderboard": "LeaderboardResponse",
    "/models": "ModelsResponse",
    "/feeds": "FeedsResponse",
    "/feeds/tail": "FeedsTailResponse",
    "/schema": "SchemaResponse",
    "/schema/leaderboard-columns": "LeaderboardColumnsResponse",
    "/schema/metrics-widgets": "MetricsWidgetsResponse",
}


@pytest.mark.parametrize("prefix", ["/reports", "/competitions/btc_updown/reports"])
def test_every_read_the_webapp_makes_has_the_webapps_type(read_api, prefix):
    _, client = read_api
    for path, type_name in READS.items():
        response = client.get(prefix + path)
        assert response.status_code == 200, path
        body = response.json()
        validate(body, type_name)
        assert body, f"{path} is empty: the check would prove nothing"
    validate(client.get(prefix + "/models").json(), "MetricsModelsResponse")
    checkpoints = client.get(prefix + "/checkpoints").json()
    assert len(checkpoints) == 2
    for checkpoint in checkpoints:
        validate(client.get(f"{prefix}/checkpoints/{checkpoint['id']}").json(), "CheckpointResponse")
        validate(client.get(f"{prefix}/checkpoints/{checkpoint['id']}/emission").json(), "EmissionResponse")
        assert client.get(f"{prefix}/checkpoints/{checkpoint['id']}").json() == checkpoint
    tail = client.get(prefix + "/feeds/tail", params={"subject": "BTC", "limit": 5}).json()
    assert len(tail) == 5 and [r["ts_event"] for r in tail] == sorted((r["ts_event"] for r in tail), reverse=True)
    newest = max(f["newest_ts"] for f in client.get(prefix + "/feeds").json() if f["subject"] == "BTC")
    assert tail[0]["ts_event"] == newest and tail[0]["values"]  # the newest stored candle, with its values
    assert client.get(prefix + "/feeds/tail", params={"subject": "DOGE"}).json() == []
    assert client.get(prefix + "/feeds/tail", params={"limit": 201}).status_code == 422


def test_the_schema_check_fails_on_our_own_shapes(read_api):
    """The check can fail: our shapes (kept on /competitions/{slug}) are not the webapp's types."""
    _, client = read_api
    ours = client.get("/competitions/btc_updown/checkpoints").json()
    assert not is_valid(ours, "CheckpointsResponse")
    one = client.get(f"/competitions/btc_updown/checkpoints/{ours['checkpoints'][0]['id']}").json()
    assert not is_valid(one, "CheckpointResponse")  # an integer id, no entries
    assert not is_valid(client.get("/competitions/btc_updown/leaderboard").json(), "LeaderboardResponse")
    assert not is_valid(client.get("/competitions/btc_updown/schema").json()["leaderboard_columns"],
                        "LeaderboardColumnsResponse")


def test_a_checkpoint_settled_as_the_webapp_does_pays_the_models_we_pay(read_api):
    _, client = read_api
    pool = 1_000_000
    registry = {m["model_id"]: m["cruncher_index"] for m in client.get("/competitions/btc_updown/models").json()["models"]}
    for checkpoint in client.get("/reports/checkpoints").json():
        ours = client.get(f"/competitions/btc_updown/checkpoints/{checkpoint['id']}/emission/cli-format",
                          params={"pool": pool}).json()
        expected = {p["model_id"]: p["amount"] for p in ours["prizes"]}
        prizes = node_checkpoint_to_prizes(checkpoint, pool)
        assert {p["model"]: p["prize"] for p in prizes} == pytest.approx(expected, abs=1)
        assert {p["prizeId"] for p in prizes} == {f"{checkpoint['id']}-{m}" for m in expected}
        split = {r["model_id"]: r for r in client.get(f"/competitions/btc_updown/checkpoints/{checkpoint['id']}")
                 .json()["reward_split"]}
        rows = build_prize_rows(checkpoint, pool)
        assert {(r["model"], r["rank"], r["share"]) for r in rows} == {
            (m, split[m]["rank"], f"{split[m]['reward_pct'] / FRAC64_MULTIPLIER * 100:.2f}%") for m in expected}
        ranking = checkpoint["meta"]["ranking"]
        assert [entry["model_id"] for entry in ranking] == sorted(registry, key=registry.get)
        assert checkpoint["entries"][0]["crunch"] == CRUNCH_PUBKEY


def test_meta_ranking_keeps_each_cruncher_in_its_slot():
    """A cruncher the checkpoint did not rank keeps its slot (rank 0); a cruncher with two models
    is paid once, under its best-ranked model."""
    from crunch_assets.api.reference import node_checkpoint
    from resources.store.rows import CheckpointRow, ModelRow

    def model(model_id, player, index):
        return ModelRow(model_id, model_id, player, f"{player} name", None, "RUNNING", index, None, None, {})

    models = [model("a1", "alice", 0), model("b1", "bob", 1), model("c1", "carol", 2), model("a2", "alice", 0)]
    ranking = [{"model_id": "c1", "cruncher_index": 2, "rank": 1, "reward_pct": 600_000_000, "score": 0.9},
               {"model_id": "a2", "cruncher_index": 0, "rank": 2, "reward_pct": 250_000_000, "score": 0.8},
               {"model_id": "a1", "cruncher_index": 0, "rank": 3, "reward_pct": 150_000_000, "score": 0.7}]
    entries = {"crunch": None, "ranking": ranking, "compute_provider_rewards": [], "data_provider_rewards": [],
               "cruncher_rewards": [{"cruncher_index": 0, "reward_pct": 400_000_000},
                                    {"cruncher_index": 2, "reward_pct": 600_000_000}]}
    at = datetime(2026, 1, 1).astimezone()
    cp = CheckpointRow(7, at, at + timedelta(hours=1), "PENDING", None, None, entries, None, None, {}, at, at)
    shaped = node_checkpoint(cp, models)
    validate(shaped, "CheckpointResponse")
    assert [(e["model_id"], e["rank"]) for e in shaped["meta"]["ranking"]] == [("a2", 2), ("b1", 0), ("c1", 1)]
    assert {p["model"]: p["prize"] for p in node_checkpoint_to_prizes(shaped, 1000)} == {"a2": 400, "c1": 600}
    assert shaped["id"] == "7" and shaped["entries"][0]["crunch"] == ""  # a string, never null


def test_the_chart_endpoints_answer_what_the_widgets_draw(read_api):
    """Each widget of /reports/schema, fetched as the starter app's useMetricData fetches it
    (projectIds joined by commas, start and end as ISO instants): the rows carry the widget's
    x axis, its series, the model id and its filter properties, and the x value parses once the
    chart appends "Z" to it."""
    _, client = read_api
    models = [m["model_id"] for m in client.get("/reports/models").json()]
    widgets = client.get("/reports/schema").json()["metrics_widgets"]
    assert {w["endpointUrl"] for w in widgets} == {"/reports/models/global", "/reports/models/params",
                                                   "/reports/predictions"}
    for widget in widgets:
        config = widget["nativeConfiguration"]
        response = client.get(widget["endpointUrl"], params={
            "projectIds": ",".join(models[:2]), "start": START.isoformat(), "end": END.isoformat()})
        assert response.status_code == 200, widget["endpointUrl"]
        rows = response.json()
        assert rows, widget["endpointUrl"]
        for row in rows:
            assert row["model_id"] in models[:2]
            x = row[config["xAxis"]["name"]]
            assert START <= datetime.fromisoformat(x + "Z") <= END, x
            for series in config["yAxis"]["series"]:
                assert series["name"] in row
            for name in [f["property"] for f in config.get("filterConfig", [])] + [config.get("groupByProperty")]:
                assert name is None or name in row
    predictions = client.get("/reports/predictions", params={"projectIds": "mean_reversion", "start": START.isoformat(),
                                                            "end": (START + timedelta(hours=1)).isoformat()}).json()
    assert len(predictions) == 60 and all(p["score_success"] and p["score_value"] is not None for p in predictions)
    assert client.get("/reports/models/global", params={"start": START.isoformat(),
                                                        "end": (START + timedelta(days=40)).isoformat()}).status_code == 422


def test_every_leaderboard_column_is_in_every_row(read_api):
    _, client = read_api
    rows = client.get("/reports/leaderboard").json()
    columns = client.get("/reports/schema/leaderboard-columns").json()
    assert len(rows) == 3 and [r["rank"] for r in rows] == [1, 2, 3]
    for row in rows:
        for column in columns:
            assert column["property"] in row, column
        assert row["status"]  # the PROJECT column's statusProperty
    ours = {e["model_id"]: e for e in client.get("/competitions/btc_updown/leaderboard").json()["entries"]}
    for row in rows:
        assert row["score_recent"] == ours[row["model_id"]]["windows"]["score_recent"]
        assert row["rank"] == ours[row["model_id"]]["rank"]


def test_the_lifecycle_through_the_reference_paths(live_api):
    _, client = live_api
    checkpoint = client.get("/reports/checkpoints", params={"status": "PENDING"}).json()[-1]
    tx = "5" * 64
    assert client.post(f"/reports/checkpoints/{checkpoint['id']}/confirm", json={"tx_hash": tx}).status_code == 401
    confirmed = client.post(f"/reports/checkpoints/{checkpoint['id']}/confirm", json={"tx_hash": tx}, headers=auth())
    assert confirmed.status_code == 200, confirmed.text
    validate(confirmed.json(), "CheckpointResponse")
    assert confirmed.json()["status"] == "SUBMITTED" and confirmed.json()["tx_hash"] == tx
    claimable = client.patch(f"/reports/checkpoints/{checkpoint['id']}/status", json={"status": "CLAIMABLE"},
                             headers=auth())
    assert claimable.status_code == 200 and claimable.json()["status"] == "CLAIMABLE"
    assert client.patch(f"/reports/checkpoints/{checkpoint['id']}/status", json={"status": "PENDING"},
                        headers=auth()).status_code == 409
    assert client.get(f"/competitions/btc_updown/checkpoints/{checkpoint['id']}/audit").json()["audit"][-1]["to_status"] \
        == "CLAIMABLE"


def test_info_names_the_crunch_account_and_its_declared_network(module_database_url):
    from dataclasses import replace

    from crunch_assets.api import create_app

    competition = replace(report_competition(module_database_url), network="devnet")
    with LiveServer(create_app([competition], api_token=TOKEN, read_env=False)) as server, \
            httpx.Client(base_url=server.url) as client:
        assert client.get("/info").json() == {
            "crunch_id": "btc_updown", "crunch_address": CRUNCH_PUBKEY, "network": "devnet",
            "competitions": [{"crunch_id": "btc_updown", "crunch_address": CRUNCH_PUBKEY, "network": "devnet"}]}
        assert client.get("/competitions/btc_updown/info").json()["network"] == "devnet"
        assert client.get("/healthz").json()["status"] == "ok"
    with serve(module_database_url, crunch=None) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/info").json()["crunch_address"] is None and client.get("/info").json()["network"] is None


@pytest.mark.integration  # runs the console script
def test_a_wrong_network_is_refused_by_name(tmp_path):
    from crunch_assets.settings import CompetitionSettings, SettingsError

    assert CompetitionSettings("btc_updown", {"CRUNCH_NETWORK": "mainnet-beta"}).network == "mainnet-beta"
    assert CompetitionSettings("btc_updown", {}).network is None
    with pytest.raises(SettingsError, match="CRUNCH_BTC_UPDOWN_NETWORK='mainnet'.*mainnet-beta, devnet, testnet"):
        _ = CompetitionSettings("btc_updown", {"CRUNCH_BTC_UPDOWN_NETWORK": "mainnet"}).network
    # the server refuses to start with it, naming the variable
    env = {**os.environ, "CRUNCH_BTC_UPDOWN_NETWORK": "solana-main", "CRUNCH_DATA_DIR": str(tmp_path)}
    result = subprocess.run([str(Path(sys.executable).parent / "crunch-dagster"), "api", "--slug", "btc_updown",
                             "--port", "1"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "CRUNCH_BTC_UPDOWN_NETWORK='solana-main'" in result.stderr
