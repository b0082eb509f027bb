"""Receipts, portable leaves and published roots, end to end on real replays of real BTC/USD
candles (../shared/data), over real HTTP, in a real headless chromium:

- every receipt of a replayed period (model ids with the grammar's punctuation, percent-encoded in
  paths) verifies with the participants' standalone verifier, and their leaves together rebuild the stored root; a tampered receipt
  names the first field that does not verify; a score changed in the store breaks its receipt;
- the browser (WebCrypto, the page's own script) recomputes the same leaves and roots, awkward
  floats and non-ASCII ids included, and the model page shows "verified", or "does not verify" for
  a tampered receipt;
- the audit verifies checkpoints of schemes 1, 2 and 3 side by side, each under its own encoding;
- the gate refuses a checkpoint whose chained root was not published (file or webhook), and
  `crunch-dagster checkpoints publish` publishes it.
"""

from __future__ import annotations

import copy
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg2.errors
import pytest
import sqlalchemy as sa

from crunch_assets import merkle, publication
from resources.store.rows import ScoreLeaf
from tests.api.conftest import TOKEN, START, auth, database_named, report_competition, role_env, serve
from tests.test_receipt_encoding import load_verifier

PROJECT_ROOT = Path(__file__).resolve().parents[2]
verifier = load_verifier()
# Model ids with every punctuation the model-id grammar allows (they travel percent-encoded in paths).
MODEL_FILES = {"mean.reversion": "mean_reversion", "trend:following@v2": "trend_following", "density+gauss=1": "gaussian_density"}
RECEIPTS_DB = "crunch_receipts_replay"
REPLAYED: dict = {}  # the replay's definitions, spec and checkpoint partition keys
HOURS = 3
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]


def _admin(url: str) -> sa.Engine:
    return sa.create_engine(url, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="module")
def replay_url(database_url, btc_csv, tmp_path_factory) -> str:
    """Three hourly checkpoints of a replay of real candles, by models whose ids hold `. : @ + =`."""
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from crunch_assets.replay import replay
    from resources.feeds.csv_replay import CsvReplayFeed
    from resources.model_runners.local import LocalModelRunner
    from resources.store.database import CrunchDatabase, dispose_engines
    from tests.api.conftest import accounts

    models = tmp_path_factory.mktemp("models")
    for model_id, quickstarter in MODEL_FILES.items():
        shutil.copy(PROJECT_ROOT / "competitions/btc_updown/models" / f"{quickstarter}.py", models / f"{model_id}.py")
    with _admin(database_url).connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {RECEIPTS_DB} WITH (FORCE)"))
        connection.execute(sa.text(f"CREATE DATABASE {RECEIPTS_DB}"))
    url = database_named(database_url, RECEIPTS_DB)
    spec = replace(SPEC, start=START, checkpoint_interval_seconds=3600)
    defs = build_definitions(spec=spec, feed=CsvReplayFeed(path=str(btc_csv), source="csv"), automation_running=False,
                             database=CrunchDatabase(url=url), payout_accounts=accounts(),
                             model_runner=LocalModelRunner(models_dir=str(models), call_timeout_seconds=5.0))
    timings = replay(defs, spec, START, START + timedelta(hours=HOURS))
    assert len(timings.checkpoints) == HOURS
    REPLAYED.update(defs=defs, spec=spec, checkpoint_keys=timings.checkpoints)
    yield url
    dispose_engines()
    with _admin(database_url).connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {RECEIPTS_DB} WITH (FORCE)"))


@pytest.fixture(scope="module")
def replay_api(replay_url):
    from crunch_assets.api import create_app
    from tests.api.conftest import ACTOR, LiveServer

    app = create_app([report_competition(replay_url)], api_token=TOKEN, actor=ACTOR, read_env=False)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        yield server, client


@pytest.fixture(scope="module")
def store(replay_url):
    from resources.store.competition import CompetitionStore

    engine = sa.create_engine(replay_url)
    yield CompetitionStore(engine, "btc_updown")
    engine.dispose()


def _receipt_path(checkpoint_id: int, model_id: str) -> str:
    return f"/competitions/btc_updown/checkpoints/{checkpoint_id}/models/{quote(model_id, safe='')}/receipt"


def _receipts(client: httpx.Client, checkpoint) -> dict[str, dict]:
    found = {}
    for row in checkpoint.entries["ranking"]:
        response = client.get(_receipt_path(checkpoint.id, row["model_id"]))
        assert response.status_code == 200, response.text
        found[row["model_id"]] = response.json()
    return found


# --- Python: the participants' standalone verifier ----------------------------------------------

def test_every_receipt_of_a_real_period_verifies_offline_and_rebuilds_the_root(replay_api, store):
    _, client = replay_api
    checkpoints = store.checkpoints()
    assert len(checkpoints) == HOURS and {cp.commitment_scheme for cp in checkpoints} == {merkle.PORTABLE_SCHEME}
    for cp in checkpoints:
        receipts = _receipts(client, cp)
        assert set(receipts) == set(MODEL_FILES)
        by_index = {}
        for model_id, receipt in receipts.items():
            assert verifier.verify_receipt(receipt) == "ok", (cp.id, model_id)
            assert receipt["model_id"] == model_id and receipt["merkle_root"] == cp.merkle_root
            assert receipt["chained_root"] == cp.chained_root and receipt["status"] == "PENDING"
            assert receipt["previous_chained_root"] == cp.meta["previous_chained_root"]
            row = next(r for r in cp.entries["ranking"] if r["model_id"] == model_id)
            assert receipt["reward"]["reward_pct"] == row["reward_pct"] and receipt["reward"]["breakdown"] == row["breakdown"]
            # each cycle of the hour, each scored: one leaf per score
            assert len(receipt["leaves"]) == row["breakdown"]["scored"] + row["breakdown"]["failed"] == 60
            for leaf in receipt["leaves"]:
                by_index[leaf["index"]] = leaf["leaf_hash"]
        # the leaves of every receipt together are the period's leaves: they rebuild the stored root
        assert sorted(by_index) == list(range(receipts[model_id]["leaf_count"]))
        level = [by_index[i] for i in sorted(by_index)]
        while len(level) > 1:
            level = [verifier._node(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                     for i in range(0, len(level), 2)]
        assert level == [cp.merkle_root]
        assert [merkle.leaf_hash(leaf) for leaf in store.score_leaves(cp.period_start, cp.period_end)] == \
            [by_index[i] for i in sorted(by_index)]
    # a leaf is what the API serves: the proof endpoint's fields, the prediction's output
    cp, model_id = checkpoints[1], "trend:following@v2"
    leaf = _receipts(client, cp)[model_id]["leaves"][7]
    proof = client.get(f"/competitions/btc_updown/checkpoints/{cp.id}/models/{quote(model_id)}/proof",
                       params={"cycle_at": leaf["cycle_at"]}).json()
    assert proof["verified"] and proof["leaf_hash"] == leaf["leaf_hash"] and proof["leaf_index"] == leaf["index"]
    assert proof["leaf"] == {key: leaf[key] for key in proof["leaf"]}
    assert [step["hash"] for step in proof["proof"]] == [step["hash"] for step in leaf["proof"]]
    predictions = client.get("/competitions/btc_updown/predictions",
                             params={"start": leaf["cycle_at"], "end": (datetime.fromisoformat(leaf["cycle_at"])
                                                                          + timedelta(minutes=1)).isoformat()}).json()
    served = next(p for p in predictions["predictions"] if p["model_id"] == model_id)
    assert served["inference_output"] == leaf["output"] and served["score"]["value"] == leaf["value"]
    ascii_leaf = _receipts(client, cp)["mean.reversion"]["leaves"][0]
    assert ascii_leaf["model_id"] == "mean.reversion"


def test_a_tampered_receipt_names_the_first_field_that_does_not_verify(replay_api, store):
    _, client = replay_api
    cp = store.checkpoints()[2]
    receipt = client.get(_receipt_path(cp.id, "density+gauss=1")).json()
    other = client.get(_receipt_path(cp.id, "mean.reversion")).json()
    assert verifier.verify_receipt(receipt) == "ok"

    def tampered(change) -> str:
        changed = copy.deepcopy(receipt)
        change(changed)
        return verifier.verify_receipt(changed)

    assert tampered(lambda r: r["leaves"][3].update(value=r["leaves"][3]["value"] + 1e-9)) == "leaves[3].leaf_hash"
    assert tampered(lambda r: r["leaves"][3]["output"].update(mean=1.0)) == "leaves[3].output"
    assert tampered(lambda r: r["leaves"][0].update(truth={"forged": True})) == "leaves[0].truth"
    assert tampered(lambda r: r["leaves"][5].update(model_id="mean.reversion")) == "leaves[5].model_id"
    assert tampered(lambda r: r["leaves"][2]["proof"].reverse()) == "leaves[2].proof"
    # another model's leaf, with its own valid path, passed off as this model's
    assert tampered(lambda r: r["leaves"].append({**other["leaves"][0], "model_id": r["model_id"]})) == \
        f"leaves[{len(receipt['leaves'])}].leaf_hash"
    assert tampered(lambda r: r.update(merkle_root=other["leaves"][0]["leaf_hash"])) == "leaves[0].proof"
    assert tampered(lambda r: r["reward"].update(reward_pct=r["reward"]["reward_pct"] + 1)) == "reward.reward_pct"
    assert tampered(lambda r: r["reward"]["breakdown"].update(scored=0)) == "reward.breakdown"

    def pay_me_more(r):
        row = next(x for x in r["entries"]["ranking"] if x["model_id"] == r["model_id"])
        row["reward_pct"] += 1
        r["reward"]["reward_pct"] += 1

    assert tampered(pay_me_more) == "entries"
    assert tampered(lambda r: r.update(previous_chained_root="f" * 64)) == "chained_root"
    assert tampered(lambda r: r.update(commitment_scheme=2)) == "commitment_scheme"
    assert tampered(lambda r: r.update(model_id="mean.reversion")) == "leaves[0].model_id"
    assert tampered(lambda r: r.pop("entries")).startswith("malformed receipt")
    assert tampered(lambda r: r["leaves"].pop(11)) == "leaves"  # a (bad) score left out of the receipt
    # the same verdicts from the command line
    for document, expected in ((receipt, "ok"), ({**receipt, "chained_root": "0" * 64}, "does not verify: chained_root")):
        result = subprocess.run([sys.executable, str(verifier.__file__), "/dev/stdin"], input=json.dumps(document),
                                capture_output=True, text=True, timeout=60)
        assert result.stdout.strip() == expected and result.returncode == (0 if expected == "ok" else 1)


def test_a_receipt_carries_the_rules_fingerprint_its_checkpoint_was_built_under(replay_api, store):
    """The receipt's rules fingerprint is the one the API serves for its checkpoint, recomputed here
    from the replay's own spec, rules and ground truth, recorded with its document; the entries (so
    the chained root) commit to it: a receipt naming other rules does not verify."""
    from crunch_assets.fingerprint import rules_book

    _, client = replay_api
    defs, spec = REPLAYED["defs"], REPLAYED["spec"]
    book = rules_book(spec, defs.resources["rules"], defs.resources.get("ground_truth"))
    for cp in store.checkpoints():
        served = client.get(f"/competitions/btc_updown/checkpoints/{cp.id}").json()
        fingerprint = served["rules_fingerprint"]
        assert fingerprint == served["rules"]["fingerprint"] == book.checkpoint_version(cp.period_start, cp.period_end).fingerprint
        assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
        recorded = client.get(f"/competitions/btc_updown/rules/{fingerprint}").json()
        assert recorded["fingerprint"] == fingerprint and recorded["verified"] is True
        for model_id, receipt in _receipts(client, cp).items():
            assert receipt["rules_fingerprint"] == receipt["entries"]["rules_fingerprint"] == fingerprint, model_id
            assert verifier.verify_receipt(receipt) == "ok"
    other = "0" * 64
    assert verifier.verify_receipt({**receipt, "rules_fingerprint": other}) == "rules_fingerprint"
    # the same lie in the entries too: their hash, which the chained root commits to, breaks
    assert verifier.verify_receipt({**receipt, "rules_fingerprint": other,
                                    "entries": {**receipt["entries"], "rules_fingerprint": other}}) == "entries"


def test_receipt_route_errors(replay_api, store, monkeypatch):
    from crunch_assets.api import app as api_app

    _, client = replay_api
    cp = store.checkpoints()[0]
    # one receipt is built at a time: a request that cannot get its turn is told to retry
    monkeypatch.setattr(api_app, "RECEIPT_WAIT_SECONDS", 0.2)
    assert api_app._receipt_slots.acquire(timeout=60)
    try:
        busy = client.get(_receipt_path(cp.id, "trend:following@v2"))
    finally:
        api_app._receipt_slots.release()
    assert busy.status_code == 503 and busy.headers["retry-after"] == "10"
    assert client.get(_receipt_path(cp.id, "trend:following@v2")).status_code == 200
    assert client.get(_receipt_path(999999, "trend:following@v2")).status_code == 404
    absent = client.get(_receipt_path(cp.id, "nobody"))
    assert absent.status_code == 404 and "not in checkpoint" in absent.json()["detail"]
    assert client.get(f"/competitions/btc_updown/checkpoints/{cp.id}/models/a%00b/receipt").status_code == 422
    assert client.get(f"/competitions/btc_updown/checkpoints/{cp.id}/models/{'x' * 201}/receipt").status_code == 422
    assert client.get(f"/reports/checkpoints/{cp.id}/models/{quote('trend:following@v2')}/receipt").status_code == 200
    script = client.get("/static/verify_receipt.py")
    assert script.status_code == 200 and script.content == Path(verifier.__file__).read_bytes()


def test_a_score_changed_in_the_store_breaks_its_receipt(replay_api, store, replay_url):
    _, client = replay_api
    cp = store.checkpoints()[1]
    cycle = cp.period_start + timedelta(minutes=17)
    engine = sa.create_engine(replay_url)
    with engine.begin() as connection:
        original = connection.execute(sa.text(
            "UPDATE crunch.scores SET value = value + 0.25 WHERE model_id = 'trend:following@v2' AND cycle_at = :c "
            "RETURNING value - 0.25"), {"c": cycle}).scalar_one()
    try:
        receipt = client.get(_receipt_path(cp.id, "trend:following@v2")).json()
        # the server rebuilds the leaf from the store as it is now: its path no longer reaches the committed root
        assert verifier.verify_receipt(receipt) == "leaves[0].proof"
        changed = next(leaf for leaf in receipt["leaves"] if leaf["cycle_at"] == cycle.isoformat())
        assert changed["value"] == pytest.approx(original + 0.25)
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE crunch.scores SET value = :v WHERE model_id = 'trend:following@v2' AND cycle_at = :c"),
                               {"v": original, "c": cycle})
        engine.dispose()
    assert verifier.verify_receipt(client.get(_receipt_path(cp.id, "trend:following@v2")).json()) == "ok"


# --- the browser: WebCrypto, the page's own script ----------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: scripts/test installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser, tmp_path, request):
    context = browser.new_context(viewport={"width": 1100, "height": 1400})
    page = context.new_page()
    page.add_init_script("window.__violations = []; document.addEventListener('securitypolicyviolation', "
                         "e => window.__violations.push(e.violatedDirective + ' ' + (e.blockedURI || 'inline')));")
    yield page
    page.screenshot(path=str(tmp_path / f"{request.node.name}.png"), full_page=True)
    context.close()


def _with_receipt_script(page, server_url: str) -> None:
    """A page of the API's origin with /static/receipt.js loaded (as the model page loads it)."""
    assert page.goto(server_url + "/").status == 200
    page.add_script_tag(url="/static/receipt.js")
    page.wait_for_function("window.crunchReceipt !== undefined")


RECOMPUTE_PERIOD = """async (urls) => {
    const r = window.crunchReceipt, leaves = {}, out = {verdicts: {}, leafHashes: {}, outputs: {}};
    let receipt;
    for (const [model, url] of Object.entries(urls)) {
        receipt = await (await fetch(url)).json();
        out.verdicts[model] = await r.verifyReceipt(receipt);
        for (const leaf of receipt.leaves) {
            leaves[leaf.index] = await r.leafHash(leaf);
            out.outputs[leaf.index] = await r.sha256(new TextEncoder().encode(r.canonical(leaf.output)));
        }
    }
    const hashes = Object.keys(leaves).map(Number).sort((a, b) => a - b).map((i) => leaves[i]);
    out.leafHashes = hashes;
    out.root = await r.merkleRoot(hashes);
    out.chained = await r.chainedRoot(receipt.previous_chained_root, out.root, receipt.entries_sha256);
    return out;
}"""


def test_the_browser_recomputes_every_leaf_and_root_of_a_real_period(replay_api, store, page):
    server, _ = replay_api
    _with_receipt_script(page, server.url)
    for cp in store.checkpoints():
        urls = {row["model_id"]: _receipt_path(cp.id, row["model_id"]) for row in cp.entries["ranking"]}
        found = page.evaluate(RECOMPUTE_PERIOD, urls)
        assert found["verdicts"] == {model_id: {"ok": True} for model_id in MODEL_FILES}
        leaves = store.score_leaves(cp.period_start, cp.period_end)
        assert found["leafHashes"] == [merkle.leaf_hash(leaf) for leaf in leaves]  # the server's, leaf by leaf
        assert found["outputs"] == {str(i): merkle.sha256_hex(merkle.canonical(leaf.inference_output))
                                    for i, leaf in enumerate(leaves)}
        assert found["root"] == cp.merkle_root and found["chained"] == cp.chained_root
    assert page.evaluate("window.__violations") == []


AWKWARD_VALUES = [1e-7, 1.0, -0.0, 5e-324, 1e21, 1e-6, 100.0, 1.7976931348623157e308, -2.5e-308, 123456789.125,
                  0.1 + 0.2, 2**53 - 1, 2**53 + 1, 2**64, 1e300, 4.35, -1e-7]
# Non-ASCII ids (a model registry may refuse them, a leaf may still hold any string): the encoding
# must not depend on which ids are allowed (non-BMP, full-width, U+2028, escapes).
AWKWARD_IDS = ["modèle_π", "趋势跟随", "🚀_densité", "ｚ-ｗｉｄｅ", "naïve\u2028line", "tab\tand \"quote\" \\"]


def test_awkward_floats_and_non_ascii_ids_encode_alike_in_the_browser(replay_api, page):
    """Leaves the server hashes (Python, rfc8785) and the same leaves as the API would serve them,
    hashed in chromium: every canonical string, leaf hash and the root agree."""
    server, _ = replay_api
    _with_receipt_script(page, server.url)
    at = datetime(2025, 1, 7, 1, tzinfo=timezone.utc)
    leaves = []
    for i, value in enumerate(AWKWARD_VALUES):
        model_id = AWKWARD_IDS[i % len(AWKWARD_IDS)]
        output = {"p": value, "nested": [value, {"\U0001F600": value, "\ufb33": -value, "€": [True, None]}], model_id: i}
        leaves.append(ScoreLeaf(model_id, "BTC-60-60", at + timedelta(minutes=i), output, {"truth": value}, float(value)))
    fields = [merkle.portable_leaf_fields(leaf) for leaf in leaves]
    served = json.dumps([{**f, "output": leaf.inference_output, "truth": leaf.actuals} for f, leaf in zip(fields, leaves)],
                        ensure_ascii=False)  # what the API serves: Python's JSON (1e-07, 1.0, -0.0, 1e+21 ...)
    found = page.evaluate("""async (served) => {
        const r = window.crunchReceipt, leaves = JSON.parse(served), out = {leaf: [], output: [], canonical: []};
        for (const leaf of leaves) {
            out.leaf.push(await r.leafHash(leaf));
            out.output.push(await r.sha256(new TextEncoder().encode(r.canonical(leaf.output))));
            out.canonical.push(r.canonical(leaf.output));
        }
        out.root = await r.merkleRoot(out.leaf);
        return out;
    }""", served)
    hashes = [merkle.sha256_hex(merkle.leaf_preimage(f, merkle.PORTABLE_SCHEME)) for f in fields]
    assert found["canonical"] == [merkle.canonical(leaf.inference_output).decode() for leaf in leaves]
    assert found["output"] == [f["output_sha256"] for f in fields]
    assert found["leaf"] == hashes == [merkle.leaf_hash(leaf) for leaf in leaves]
    assert found["root"] == merkle.merkle_root(hashes)
    assert page.evaluate("JSON.stringify(window.crunchReceipt.canonical(JSON.parse('[1e-07,1.0,-0.0,1e+21]')))") == \
        json.dumps(merkle.canonical([1e-7, 1.0, -0.0, 1e21]).decode())


def _latest_checkpoint(client: httpx.Client) -> dict:
    return max(client.get("/competitions/btc_updown/checkpoints").json()["checkpoints"], key=lambda c: c["period_start"])


def test_the_model_page_verifies_its_latest_receipt(read_api, page):
    server, client = read_api
    latest = _latest_checkpoint(client)
    page.goto(server.url + "/page/btc_updown/models/mean_reversion")
    widget = page.locator("#receipt")
    assert widget.get_attribute("data-checkpoint") == str(latest["id"])
    status = widget.locator(".receipt-status")
    status.filter(has_text="verified").wait_for(timeout=120_000)
    assert status.get_attribute("data-state") == "verified" and status.inner_text() == "verified"
    assert widget.get_attribute("data-leaves") == str(24 * 60)  # a daily checkpoint: a score a minute
    assert page.evaluate("window.__violations") == []


@pytest.mark.parametrize(("tamper", "field"), [
    ("reward", "reward.reward_pct"), ("leaf", "leaves[0].leaf_hash"), ("root", "leaves[0].proof"),
    ("rules", "rules_fingerprint")])
def test_a_tampered_receipt_does_not_verify_on_the_page(read_api, page, tamper, field):
    """The API's receipt altered on its way to the browser: the page says it does not verify."""
    server, client = read_api
    latest = _latest_checkpoint(client)

    def forge(route):
        receipt = json.loads(route.fetch().text())
        if tamper == "reward":
            receipt["reward"]["reward_pct"] += 10_000_000
        elif tamper == "leaf":
            receipt["leaves"][0]["value"] = 1.0
        elif tamper == "rules":
            assert receipt["rules_fingerprint"] == receipt["entries"]["rules_fingerprint"]
            receipt["rules_fingerprint"] = "0" * 64
        else:
            receipt["merkle_root"] = "ab" * 32
        route.fulfill(status=200, content_type="application/json", body=json.dumps(receipt))

    page.route(f"**/checkpoints/{latest['id']}/models/trend_following/receipt", forge)
    page.goto(server.url + "/page/btc_updown/models/trend_following")
    status = page.locator("#receipt .receipt-status")
    status.filter(has_text="does not verify").wait_for(timeout=120_000)
    assert status.get_attribute("data-state") == "failed" and status.inner_text() == f"does not verify: {field}"


# --- the audit: schemes 1, 2 and 3 side by side --------------------------------------------------

def _rewrite(connection, cp_id: int, scheme: int, root: str, chained: str, previous: str | None) -> None:
    connection.execute(sa.text(
        "UPDATE crunch.checkpoints SET commitment_scheme = :s, merkle_root = :r, chained_root = :c, "
        "meta = jsonb_set(meta, '{previous_chained_root}', CAST(:p AS jsonb)) WHERE id = :id"),
        {"s": scheme, "r": root, "c": chained, "p": json.dumps(previous), "id": cp_id})


def _audit_cli(url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crunch_assets.cli", "audit", "btc_updown"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **role_env(url), "CRUNCH_AUTOMATION": "off",
                               # the replay's deployment: the audit recomputes under its rules (fingerprint)
                               "CRUNCH_BTC_UPDOWN_START": START.isoformat(),
                               "CRUNCH_BTC_UPDOWN_CHECKPOINT_INTERVAL_SECONDS": "3600"})


def test_the_audit_verifies_schemes_1_2_and_3_side_by_side(replay_url, store, replay_api):
    """The first checkpoint as stored before migration 0006 (scheme 1), the second as between 0006
    and 0008 (scheme 2), the third as now: each verifies under its own encoding, a score changed in
    any of their periods is found at its checkpoint, receipts are for scheme 3, the gate refuses
    scheme 2, and the database refuses a new checkpoint below scheme 3."""
    from crunch_assets.payouts import check_leaves_portable
    from crunch_assets.verification import audit_checkpoints, first_problem
    from resources.store.competition import CompetitionStore
    from resources.store.database import engine_for
    from tests.api.conftest import accounts

    _, client = replay_api
    first, second, third = store.checkpoints()
    originals = {cp.id: cp for cp in (first, second, third)}
    leaves = {cp.id: store.score_leaves(cp.period_start, cp.period_end) for cp in originals.values()}
    root1 = merkle.merkle_root([merkle.leaf_hash(leaf, merkle.LEGACY_SCHEME) for leaf in leaves[first.id]])
    chained1 = merkle.chain(None, root1)
    root2 = merkle.merkle_root([merkle.leaf_hash(leaf, merkle.ENTRIES_SCHEME) for leaf in leaves[second.id]])
    chained2 = merkle.chain_with_entries(chained1, root2, second.meta["entries_sha256"], merkle.ENTRIES_SCHEME)
    chained3 = merkle.chain_with_entries(chained2, third.merkle_root, third.meta["entries_sha256"], merkle.PORTABLE_SCHEME)
    assert root1 != first.merkle_root and root2 != second.merkle_root  # the encodings differ on real data
    engine = sa.create_engine(replay_url)
    sink = publication.RootSink.from_settings(report_competition(replay_url).settings)

    def restore():
        with engine.begin() as connection:
            connection.execute(sa.text("ALTER TABLE crunch.checkpoints DISABLE TRIGGER checkpoints_guard"))
            for cp in originals.values():
                _rewrite(connection, cp.id, cp.commitment_scheme, cp.merkle_root, cp.chained_root,
                         cp.meta["previous_chained_root"])
            connection.execute(sa.text("ALTER TABLE crunch.checkpoints ENABLE ALWAYS TRIGGER checkpoints_guard"))

    try:
        with engine.begin() as connection:  # a superuser's rewrite, standing in for the store's history
            connection.execute(sa.text("ALTER TABLE crunch.checkpoints DISABLE TRIGGER checkpoints_guard"))
            _rewrite(connection, first.id, merkle.LEGACY_SCHEME, root1, chained1, None)
            _rewrite(connection, second.id, merkle.ENTRIES_SCHEME, root2, chained2, chained1)
            _rewrite(connection, third.id, merkle.PORTABLE_SCHEME, third.merkle_root, chained3, chained2)
            connection.execute(sa.text("ALTER TABLE crunch.checkpoints ENABLE ALWAYS TRIGGER checkpoints_guard"))
        rewritten = {cp.id: cp for cp in store.checkpoints()}
        publication.publish(sink, rewritten[third.id])  # as when it was built
        audits = audit_checkpoints(store)
        assert [(a.commitment_scheme, a.ok) for a in audits] == [(1, True), (2, True), (3, True)], [a.problems for a in audits]
        result = _audit_cli(replay_url)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "3 checkpoint(s) verified" in result.stdout
        assert [line.split(" scheme ")[1][0] for line in result.stdout.splitlines() if " scheme " in line] == ["1", "2", "3"]

        # a score changed in each period in turn: found at its checkpoint, under its scheme
        for index, cp in enumerate(originals.values()):
            cycle = cp.period_start + timedelta(minutes=31)
            with engine.begin() as connection:
                connection.execute(sa.text("UPDATE crunch.scores SET value = value + 1 WHERE cycle_at = :c AND "
                                           "model_id = 'mean.reversion'"), {"c": cycle})
            try:
                problem = first_problem(audit_checkpoints(store))
                assert problem.checkpoint_id == cp.id and not problem.root_matches
                assert problem.commitment_scheme == index + 1
            finally:
                with engine.begin() as connection:
                    connection.execute(sa.text("UPDATE crunch.scores SET value = value - 1 WHERE cycle_at = :c AND "
                                               "model_id = 'mean.reversion'"), {"c": cycle})
        assert first_problem(audit_checkpoints(store)) is None

        # receipts start with scheme 3; the gate refuses a scheme-2 checkpoint
        old = client.get(_receipt_path(second.id, "trend:following@v2"))
        assert old.status_code == 404 and "commitment scheme 2" in old.json()["detail"]
        assert verifier.verify_receipt(client.get(_receipt_path(third.id, "trend:following@v2")).json()) == "ok"
        assert not check_leaves_portable(rewritten[second.id]).passed
        assert check_leaves_portable(rewritten[third.id]).passed

        # the database refuses a rebuilt checkpoint below scheme 3 (migration 0009), for the engine too
        from competitions.btc_updown.definitions import RULES, SPEC
        from crunch_assets.defs.checkpoints.assets import build_checkpoint

        spec = replace(SPEC, start=START, checkpoint_interval_seconds=3600)
        built = build_checkpoint(spec, RULES, store, accounts(), third.period_start, third.period_end)
        engine_store = CompetitionStore(engine_for(role="engine", database=RECEIPTS_DB), "btc_updown")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="commitment scheme 2 is retired"):
            engine_store.write_pending_checkpoint(third.period_start, third.period_end, built.entries, built.merkle_root,
                                                  built.chained_root, built.meta, merkle.ENTRIES_SCHEME)
    finally:
        restore()
        engine.dispose()
    assert all(a.ok for a in audit_checkpoints(store))


# --- the published roots and the gate ------------------------------------------------------------

def test_the_checkpoint_asset_publishes_each_root_and_a_failed_publication_fails_nothing(
        store, replay_url, tmp_path, monkeypatch):
    from crunch_assets.settings import CompetitionSettings
    from tests.rewards_fixtures import materialize_one

    sink = publication.RootSink.from_settings(CompetitionSettings("btc_updown"))
    published = publication.read_publications(sink)
    checkpoints = store.checkpoints()
    for cp in checkpoints:  # as the replay built them, each published with what it commits to
        assert publication.publication_problem(sink, cp, published) is None
        line = next(r for r in published if r["chained_root"] == cp.chained_root)
        assert line["merkle_root"] == cp.merkle_root and line["commitment_scheme"] == merkle.PORTABLE_SCHEME
        assert line["previous_chained_root"] == cp.meta["previous_chained_root"] and line["webhook"] is None
        assert datetime.fromisoformat(line["published_at"]) >= cp.created_at

    # the publication directory cannot be written: the checkpoint is still stored, the run succeeds,
    # and its metadata (and the gate, until `checkpoints publish`) say the root is not published
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("CRUNCH_ROOT_PUBLICATION_DIR", str(blocked))
    result = materialize_one(REPLAYED["defs"], REPLAYED["spec"], "emission_checkpoints", REPLAYED["checkpoint_keys"][-1])
    assert result.success
    [event] = result.get_asset_materialization_events()
    assert event.materialization.metadata["root_publication"].value.startswith("failed: NotADirectoryError")
    assert store.checkpoints()[-1].chained_root == checkpoints[-1].chained_root  # rebuilt the same
    problem = publication.publication_problem(publication.RootSink.from_settings(CompetitionSettings("btc_updown")),
                                              store.checkpoints()[-1])
    assert problem.startswith("the publication file (ROOT_PUBLICATION_DIR) cannot be read (Not a directory)")
    assert str(blocked) not in problem  # the gate's result is public: no path


class _Webhook:
    """A loopback HTTP receiver answering `status` and keeping what it was sent."""

    def __init__(self):
        self.status = 500
        self.received: list[dict] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                owner.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(owner.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/roots"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _publish_cli(url: str, checkpoint_id: int, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crunch_assets.cli", "checkpoints", "publish", "btc_updown",
                           str(checkpoint_id)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **role_env(url), **env, "CRUNCH_AUTOMATION": "off"})


def test_the_gate_refuses_a_root_that_was_not_published(api_database_url, tmp_path, monkeypatch):
    """With an empty publication directory (the checkpoint was built elsewhere, or its publication
    failed), submission is refused naming the fix; `checkpoints publish` publishes it; with a
    webhook configured, only a delivered root passes."""
    roots = tmp_path / "roots"
    monkeypatch.setenv("CRUNCH_ROOT_PUBLICATION_DIR", str(roots))
    with serve(api_database_url) as server, httpx.Client(base_url=server.url, timeout=300) as client, _Webhook() as hook:
        first = min(client.get("/competitions/btc_updown/checkpoints").json()["checkpoints"], key=lambda c: c["period_start"])
        refused = client.post(f"/competitions/btc_updown/checkpoints/{first['id']}/confirm", json={"tx_hash": "0x" + "cd" * 32},
                              headers=auth())
        assert refused.status_code == 409
        reasons = [r for r in refused.json()["detail"]["reasons"] if r.startswith("chained_root_published")]
        assert len(reasons) == 1 and f"crunch-dagster checkpoints publish btc_updown {first['id']}" in reasons[0]
        assert all(not r.startswith(("leaves_portable", "merkle_root_verifies")) for r in refused.json()["detail"]["reasons"])

        # a webhook that refuses: the line is written, the root does not count as published
        monkeypatch.setenv("CRUNCH_ROOT_PUBLICATION_WEBHOOK_URL", hook.url)
        env = {"CRUNCH_ROOT_PUBLICATION_DIR": str(roots), "CRUNCH_ROOT_PUBLICATION_WEBHOOK_URL": hook.url}
        failed = _publish_cli(api_database_url, first["id"], env)
        assert failed.returncode == 1 and "not delivered to the publication webhook" in failed.stderr
        assert hook.url not in failed.stdout + failed.stderr  # a secret: never printed
        assert str(roots) not in json.dumps(refused.json())  # the gate's result is public: no path
        assert hook.received and hook.received[-1]["chained_root"] == first["chained_root"]
        again = client.post(f"/competitions/btc_updown/checkpoints/{first['id']}/confirm", json={"tx_hash": "0x" + "cd" * 32},
                            headers=auth())
        assert again.status_code == 409 and any("not delivered" in r for r in again.json()["detail"]["reasons"])

        hook.status = 200
        done = _publish_cli(api_database_url, first["id"], env)
        assert done.returncode == 0, done.stdout + done.stderr
        lines = [json.loads(line) for line in (roots / "btc_updown.jsonl").read_text().splitlines()]
        assert [line["webhook"]["delivered"] for line in lines] == [False, True]
        assert {line["chained_root"] for line in lines} == {first["chained_root"]}
        assert (roots / "btc_updown.jsonl").read_bytes().endswith(merkle.canonical(lines[-1]) + b"\n")  # RFC 8785 lines
        repeat = _publish_cli(api_database_url, first["id"], env)
        assert repeat.returncode == 0 and "already published" in repeat.stdout
        assert len((roots / "btc_updown.jsonl").read_text().splitlines()) == 2

        submitted = client.post(f"/competitions/btc_updown/checkpoints/{first['id']}/confirm", json={"tx_hash": "0x" + "cd" * 32},
                                headers=auth())
        assert submitted.status_code == 200, submitted.text
        gate = {c["name"]: c for c in client.get(f"/competitions/btc_updown/checkpoints/{first['id']}/gate").json()["gate"]["checks"]}
        assert gate["chained_root_published"]["passed"] and gate["leaves_portable"]["passed"]
        cli = client.get(f"/competitions/btc_updown/checkpoints/{first['id']}/emission/cli-format").json()
        assert cli["chained_root"] == first["chained_root"] and cli["commitment_scheme"] == merkle.PORTABLE_SCHEME
        # the receipt of a SUBMITTED checkpoint, from the command line, is the API's
        printed = subprocess.run([sys.executable, "-m", "crunch_assets.cli", "checkpoints", "receipt", "btc_updown",
                                  str(first["id"]), "trend_following"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                 timeout=300, env={**os.environ, **role_env(api_database_url), "CRUNCH_AUTOMATION": "off"})
        assert printed.returncode == 0, printed.stderr
        receipt = json.loads(printed.stdout)
        assert receipt == client.get(f"/competitions/btc_updown/checkpoints/{first['id']}/models/trend_following/receipt").json()
        assert receipt["status"] == "SUBMITTED" and verifier.verify_receipt(receipt) == "ok"
