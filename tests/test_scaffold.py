"""`crunch-dagster init` for every pack into a temporary copy of this checkout (its tracked files),
run through the real console script: the generated code locations load with the Dagster
CLI and in `dagster dev` (what ./scripts/demo starts), the generated tests pass, a replay through the
CLI fills the store and `verify` sees it; the refusals (taken slug, bad slug, typo'd spec) write
nothing; `doctor` reports every broken callable and every subject the feed cannot serve."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
import yaml

from resources.database_url import DATABASE_ENV_VARS
from click.testing import CliRunner

from crunch_assets.cli import main as cli

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SLUG_OF_PACK = {"baseline": "scaffold_baseline", "realtime": "scaffold_realtime", "tournament": "scaffold_tournament"}
# (prediction_interval_seconds, resolve_horizon_seconds, weight, name) per scope, and the feed
EXPECTED_PACKS = {
    "baseline": ([(60, 60, 1.0, "one_minute")], ("candle", 60)),
    "realtime": ([(15, 60, 1.0, "realtime")], ("candle", 1)),
    "tournament": ([(300, 300, 1.0, "in_sample"), (900, 900, 2.0, "out_of_sample")], ("candle", 60)),
}
REPLAY_FROM, REPLAY_TO = "2026-11-02T00:00:00+00:00", "2026-11-02T03:00:00+00:00"


def copy_checkout(destination: Path) -> Path:
    """The checkout's tracked files as they are on disk (what a clone holds, with uncommitted
    edits), without .venv, .crunch, caches or untracked work."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "-z"],
        cwd=PROJECT_ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for relative in filter(None, listed):
        source = PROJECT_ROOT / relative
        if source.is_file():
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def environment(checkout: Path, **extra: str) -> dict[str, str]:
    """This process's environment without competition settings, importing from the copy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUNCH_") or k in DATABASE_ENV_VARS}
    env.update(PYTHONPATH=str(checkout), CRUNCH_AUTOMATION="off", CRUNCH_TEST_DATABASE_URL=os.environ["CRUNCH_DATABASE_URL"])
    env.pop("DAGSTER_HOME", None)
    env.update(extra)
    return env


def run(checkout: Path, *args: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=checkout, env=environment(checkout, **extra), capture_output=True,
                          text=True, timeout=timeout)


def crunch(checkout: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return run(checkout, str(BIN / "crunch-dagster"), *args, **kwargs)


def workspace_modules(checkout: Path) -> list[str]:
    data = yaml.safe_load((checkout / "workspace.yaml").read_text())
    return [entry["python_module"]["module_name"] for entry in data["load_from"]]


def snapshot(checkout: Path) -> dict[str, bytes]:
    return {str(p.relative_to(checkout)): p.read_bytes() for p in sorted(checkout.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and ".crunch" not in p.parts}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory, database_url) -> Path:
    """A copy of the checkout with one competition generated per pack: the README's flow
    (`init <slug> --pack tournament`) through the console script, the other two through the same
    command in this process (quicker). Slugs no real competition would take."""
    root = copy_checkout(tmp_path_factory.mktemp("checkout"))
    result = crunch(root, "init", "scaffold_tournament", "--pack", "tournament")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "generated scaffold_tournament (pack tournament)" in result.stdout
    for pack in ("baseline", "realtime"):
        slug = SLUG_OF_PACK[pack]
        invoked = CliRunner().invoke(cli, ["init", slug, "--pack", pack, "--output", str(root)])
        assert invoked.exit_code == 0, invoked.output
        assert f"generated {slug} (pack {pack})" in invoked.output
    return root


@pytest.mark.parametrize("pack", list(SLUG_OF_PACK))
def test_init_generates_the_pack(checkout, pack):
    slug = SLUG_OF_PACK[pack]
    for relative in (f"competitions/{slug}/definitions.py", f"competitions/{slug}/config.py", f"competitions/{slug}/logic.py",
                     f"competitions/{slug}/SKILL.md", f"challenges/{slug}/SKILL.md", f"challenges/{slug}/README.md",
                     f"challenges/{slug}/pyproject.toml", f"competitions/{slug}/model_base.py",
                     f"competitions/{slug}/scoring.py", f"competitions/{slug}/schemas.py",
                     f"tests/competitions/test_{slug}.py"):
        assert (checkout / relative).is_file(), relative
    assert sorted(p.name for p in (checkout / f"competitions/{slug}/models").glob("*.py")) == [
        "mean_reversion.py", "trend_following.py", "volatility_regime.py"]
    assert workspace_modules(checkout).count(f"competitions.{slug}.definitions") == 1
    probe = run(checkout, sys.executable, "-c", (
        f"import json; from competitions.{slug}.config import SPEC, FEED_DEFAULTS, RULES\n"
        "print(json.dumps({'scopes': [[s.prediction_interval_seconds, s.resolve_horizon_seconds, s.weight, s.name] "
        "for s in SPEC.scopes], 'feed': [FEED_DEFAULTS.kind, FEED_DEFAULTS.granularity_seconds], "
        "'base': RULES.model_base_class, 'failure': SPEC.failure_policy.value}))"))
    assert probe.returncode == 0, probe.stderr
    declared = json.loads(probe.stdout)
    scopes, feed = EXPECTED_PACKS[pack]
    assert [tuple(s) for s in declared["scopes"]] == scopes
    assert tuple(declared["feed"]) == feed
    assert declared["base"] == f"competitions.{slug}.model_base:{''.join(p.capitalize() for p in slug.split('_'))}Model"
    assert declared["failure"] == -1.0  # the worst score of the default scoring: failing never pays
    skill = (checkout / f"competitions/{slug}/SKILL.md").read_text()
    for must in ("config.py", "logic.py", "ground_truth_resolver", f"crunch-dagster doctor {slug}",
                 f"crunch-dagster replay {slug}", "## Do not"):
        assert must in skill


def test_generated_code_locations_validate(checkout):
    """What `dagster definitions validate` checks, for the three generated modules in one process
    (the demo test below loads the whole workspace through Dagster's own code servers)."""
    modules = [f"competitions.{slug}.definitions" for slug in SLUG_OF_PACK.values()]
    assert set(modules) <= set(workspace_modules(checkout))
    result = run(checkout, sys.executable, "-c", (
        "import importlib, json, sys, dagster as dg\n"
        "report = {}\n"
        "for name in sys.argv[1:]:\n"
        "    defs = importlib.import_module(name).defs\n"
        "    dg.Definitions.validate_loadable(defs)\n"
        "    keys = defs.resolve_asset_graph().get_all_asset_keys()\n"
        "    report[name] = {'prefixes': sorted({k.path[0] for k in keys}), 'assets': len(keys),\n"
        "                    'automation': sorted({s.name.split('__')[0] for s in [*defs.sensors, *defs.schedules]})}\n"
        "print(json.dumps(report))"), *modules)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    for slug in SLUG_OF_PACK.values():
        loaded = report[f"competitions.{slug}.definitions"]
        # asset keys, sensors and schedules are global across code locations: all prefixed with the slug
        assert loaded["prefixes"] == [slug] and loaded["automation"] == [slug] and loaded["assets"] >= 7


@pytest.mark.parametrize("pack", list(SLUG_OF_PACK))
def test_generated_tests_pass(checkout, pack):
    slug = SLUG_OF_PACK[pack]
    result = run(checkout, sys.executable, "-m", "pytest", f"tests/competitions/test_{slug}.py", "-q",
                 "-p", "no:cacheprovider", timeout=600)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, summary
    assert int(summary.split(" passed")[0].split()[-1]) >= 17


def test_replay_cli_fills_the_store_and_verify_waits_for_it(checkout, clean_database):
    env = {"CRUNCH_SCAFFOLD_TOURNAMENT_START": REPLAY_FROM, "CRUNCH_SCAFFOLD_TOURNAMENT_CHECKPOINT_INTERVAL_SECONDS": "3600"}
    # verify first: it must wait for the scores and the leaderboard the replay is about to write
    verifier = subprocess.Popen(
        [str(BIN / "crunch-dagster"), "verify", "scaffold_tournament", "--timeout-seconds", "300", "--poll-seconds", "0.5"],
        cwd=checkout, env=environment(checkout, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        replayed = crunch(checkout, "replay", "scaffold_tournament", "--from", REPLAY_FROM, "--to", REPLAY_TO, **env)
        assert replayed.returncode == 0, replayed.stdout[-3000:] + replayed.stderr[-3000:]
        # tournament: 12 in-sample + 4 out-of-sample cycles an hour, 3 hours, 3 quickstarters
        assert "48 cycles, 144 predictions 144 SCORED" in replayed.stdout
        assert replayed.stdout.count("1,000,000,000 frac64 paid") == 3
        verified_out, verified_err = verifier.communicate(timeout=300)
    finally:
        if verifier.poll() is None:
            verifier.kill()
            verifier.wait()
    assert verifier.returncode == 0, verified_out + verified_err
    assert "verified: scaffold_tournament has 144 scored predictions and a leaderboard of 3 models" in verified_out

    engine = sa.create_engine(clean_database)
    with engine.connect() as connection:
        scores = connection.execute(sa.text(
            "SELECT scope_key, count(*) FROM crunch.scores WHERE competition = 'scaffold_tournament' AND success GROUP BY 1 ORDER BY 1"
        )).fetchall()
        checkpoints = connection.execute(sa.text(
            "SELECT period_start, entries FROM crunch.checkpoints WHERE competition = 'scaffold_tournament' ORDER BY period_start"
        )).fetchall()
        boards = connection.execute(sa.text("SELECT count(*) FROM crunch.leaderboards WHERE competition = 'scaffold_tournament'")).scalar()
    engine.dispose()
    assert [tuple(row) for row in scores] == [("BTC-300-300", 36 * 3), ("BTC-900-900", 12 * 3)]
    assert len(checkpoints) == 3 and boards == 1
    for checkpoint in checkpoints:
        assert sum(row["reward_pct"] for row in checkpoint.entries["ranking"]) == 1_000_000_000

    # the CLI's own refusals: an instant without offset, a range before the competition starts
    naive = crunch(checkout, "replay", "scaffold_tournament", "--from", "2026-11-02T00:00:00", "--to", REPLAY_TO, **env)
    assert naive.returncode == 2 and "no UTC offset" in naive.stderr
    early = crunch(checkout, "replay", "scaffold_tournament", "--from", "2026-11-01T00:00:00+00:00", "--to", REPLAY_TO, **env)
    assert early.returncode == 1 and "before scaffold_tournament's first partition" in early.stderr


def test_verify_times_out_with_a_verdict(checkout, clean_database):
    result = crunch(checkout, "verify", "scaffold_baseline", "--timeout-seconds", "1", "--poll-seconds", "0.2")
    assert result.returncode == 1
    assert "NOT verified after 1 s: 0 of 1 scored predictions; no leaderboard entries" in result.stderr


def test_public_modules_import_from_the_checkout_without_any_sys_path_edit(checkout):
    """The coordinator imports the public modules as competitions.<slug> (one copy, in the
    competition's directory). Before, importing the competition put challenges/<slug>/ first on
    sys.path; now loading the code location leaves sys.path as it was, and the participants' name
    crunch_<slug> exists only once installed."""
    result = run(checkout, sys.executable, "-c", (
        "import importlib.util, json, sys\n"
        "before = list(sys.path)\n"
        "import competitions.scaffold_tournament.definitions, competitions.scaffold_tournament.scoring as s\n"
        "print(json.dumps({'file': s.__file__, 'same_path': sys.path == before,\n"
        "  'installed_name': importlib.util.find_spec('crunch_scaffold_tournament') is not None}))"))
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert Path(found["file"]) == checkout / "competitions/scaffold_tournament/scoring.py"
    assert found["same_path"] and not found["installed_name"]


def test_challenge_package_installs_alone_into_a_fresh_venv(checkout, tmp_path):
    """pip install ./challenges/scaffold_tournament into a new venv, offline: the venv borrows this venv's
    installed distributions (pip, setuptools, pydantic) read-only through a .pth file; the
    checkout's packages (an editable install, whose finder a borrowed path does not run) stay out."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "borrowed_site_packages.pth").write_text(ours + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_FIND_LINKS")}
    env["PIP_CONFIG_FILE"] = os.devnull  # this machine's pip settings play no part
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-index", "--no-build-isolation", "--disable-pip-version-check",
         str(checkout / "challenges/scaffold_tournament")], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    assert "Successfully installed crunch-scaffold-tournament-0.1.0" in installed.stdout
    probe = subprocess.run([str(python), "-c", (
        "import importlib.util, json, crunch_scaffold_tournament, crunch_scaffold_tournament.schemas as schemas\n"
        "from crunch_scaffold_tournament.examples.trend_following import TrendFollowing\n"
        "from crunch_scaffold_tournament.scoring import self_evaluate\n"
        "prices = [(1793577600 + 60 * i, 100.0 + (i % 9)) for i in range(300)]\n"
        "result = self_evaluate(TrendFollowing(), prices, 300, 300, 3600)\n"
        "schemas.ModelOutput.model_validate({'position': 0.25})\n"
        "print(json.dumps({'file': crunch_scaffold_tournament.__file__, 'result': result,\n"
        "  'engine': [importlib.util.find_spec(m) is not None for m in ('crunch_assets', 'competitions', 'dagster')]}))"
    )], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert found["file"].startswith(site)  # the installed copy, not the checkout's source
    # the receipt verifier ships with the package: a server-built receipt verifies, a changed one is named
    from tests.test_receipt_encoding import in_memory_receipt

    receipt = in_memory_receipt()
    for name, document, expected in (("receipt.json", receipt, "ok"),
                                     ("forged.json", {**receipt, "reward": {**receipt["reward"], "reward_pct": 10**9}},
                                      "does not verify: reward.reward_pct")):
        (tmp_path / name).write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
        checked = subprocess.run([str(python), "-m", "crunch_scaffold_tournament.verify_receipt", name],
                                 capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        assert checked.stdout.strip() == expected and checked.returncode == (expected != "ok"), checked.stderr
    assert found["result"]["cycles"] == 59 and found["result"]["failed"] == 0  # cycles of 300 s with a price 300 s later
    assert found["engine"] == [False, False, True]  # no coordinator code came along (dagster: only borrowed)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


LOCATIONS_QUERY = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def test_the_demo_lists_every_generated_competition(checkout):
    """`dagster dev -w workspace.yaml` as ./scripts/demo runs it (DAGSTER_HOME unset: ./dagster.yaml)."""
    port = _free_port()
    server = subprocess.Popen(
        [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=checkout, env=environment(checkout), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    expected = {"btc_updown", *SLUG_OF_PACK.values()}
    entries: dict = {}
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and server.poll() is None:
            try:
                answer = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": LOCATIONS_QUERY}, timeout=10)
                workspace = answer.json()["data"]["workspaceOrError"]
                entries = {e["name"]: e for e in workspace.get("locationEntries", [])}
                if expected <= set(entries) and all(entries[n]["loadStatus"] == "LOADED" for n in expected):
                    break
            except (requests.ConnectionError, requests.Timeout, ValueError, KeyError, TypeError):
                pass
            time.sleep(0.5)  # polling interval of a deadline-bounded wait, not a synchronisation
        assert server.poll() is None, server.stderr.read()[-3000:]
        for name in expected:
            assert entries.get(name, {}).get("loadStatus") == "LOADED", entries.get(name)
            assert entries[name]["locationOrLoadError"]["__typename"] == "RepositoryLocation", entries[name]
        assets = requests.post(f"http://127.0.0.1:{port}/graphql", timeout=30,
                               json={"query": "{ assetNodes { assetKey { path } } }"}).json()["data"]["assetNodes"]
        keys = {tuple(node["assetKey"]["path"]) for node in assets}
        for slug in SLUG_OF_PACK.values():
            assert {(slug, "predictions"), (slug, "scores"), (slug, "leaderboard"), (slug, "emission_checkpoints")} <= keys
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


# --- refusals: each names the problem and writes nothing ------------------------------------------


@pytest.fixture
def small_checkout(tmp_path) -> Path:
    """Just enough of a checkout for init to refuse or accept: workspace.yaml and competitions/."""
    (tmp_path / "competitions/btc_updown").mkdir(parents=True)
    (tmp_path / "competitions/__init__.py").write_text("")
    shutil.copy(PROJECT_ROOT / "workspace.yaml", tmp_path / "workspace.yaml")
    return tmp_path


def _init(checkout: Path, *args: str):
    return CliRunner().invoke(cli, ["init", *args, "--output", str(checkout)])


def test_init_refuses_a_taken_slug(small_checkout):
    before = snapshot(small_checkout)
    result = _init(small_checkout, "btc_updown")
    assert result.exit_code == 1
    assert "slug 'btc_updown' already exists: competitions/btc_updown is there" in result.output
    assert "slug 'btc_updown' already exists: workspace.yaml has a code location 'btc_updown'" in result.output
    assert snapshot(small_checkout) == before


@pytest.mark.parametrize("slug, hint", [("my-comp", "did you mean 'my_comp'?"), ("My Comp", "did you mean 'my_comp'?"),
                                        ("2fast", "must match"), ("import", "Python keyword"),
                                        ("assets", "'crunch_assets' is already importable")])
def test_init_refuses_a_bad_slug(small_checkout, slug, hint):
    before = snapshot(small_checkout)
    result = _init(small_checkout, slug)
    assert result.exit_code == 1 and hint in result.output, result.output
    assert "nothing was written" in result.output
    assert snapshot(small_checkout) == before


def test_init_refuses_a_spec_with_typos_naming_every_key(small_checkout):
    spec = small_checkout / "spec.json"
    spec.write_text(json.dumps({
        "spec_version": "1",
        "scopes": [{"name": "fast", "subjet": "ETH", "prediction_interval_seconds": 60, "resolve_horizon_seconds": 60}],
        "checkpoint_intervall_seconds": 3600,
        "emission": {"kind": "softmax", "temperature": 0},
    }))
    before = snapshot(small_checkout)
    result = _init(small_checkout, "typo_comp", "--spec", str(spec))
    assert result.exit_code == 1
    assert "scopes[0].subjet: unknown key; did you mean 'subject'?" in result.output
    assert "checkpoint_intervall_seconds: unknown key; did you mean 'checkpoint_interval_seconds'?" in result.output
    assert snapshot(small_checkout) == before
    # once the keys and types are right, CompetitionSpec's own rules run (here: the temperature)
    spec.write_text(json.dumps({"spec_version": "1", "emission": {"kind": "softmax", "temperature": 0}}))
    before = snapshot(small_checkout)
    result = _init(small_checkout, "typo_comp", "--spec", str(spec))
    assert result.exit_code == 1 and "emission: softmax temperature must be > 0, got 0" in result.output, result.output
    assert snapshot(small_checkout) == before


@pytest.mark.parametrize("spec, message", [
    ({"scopes": []}, "spec_version: required key missing"),
    ({"spec_version": "2"}, "spec_version: Input should be '1'"),
    ({"spec_version": "1", "max_price_staleness_seconds": 60}, "max_price_staleness_seconds (60) must be smaller than scope BTC-60-60's horizon"),
    ({"spec_version": "1", "slug": "other_name"}, "the spec names 'other_name' but the command names 'spec_comp'"),
    ({"spec_version": "1", "callables": {"scoring_function": "no colon here"}}, "callables.scoring_function: String should match pattern"),
    ({"spec_version": "1", "scopes": [{"name": "a", "subject": "BTC", "prediction_interval_seconds": 0, "resolve_horizon_seconds": 60}]},
     "scope BTC-60-0: prediction_interval_seconds must be in [1, 604800]"),
    ({"spec_version": "1", "scopes": [{"name": "a", "subject": "BTC", "prediction_interval_seconds": "60", "resolve_horizon_seconds": 60}]},
     "scopes[0].prediction_interval_seconds: Input should be a valid integer (got '60')"),
    ({"spec_version": "1", "emission": {"kind": "softmax", "temperature": 2.0, "floor_pct": 5.0}},
     "emission: floor_pct is not a setting of the softmax emission (its settings: temperature)"),
])
def test_init_refuses_a_bad_spec_value(small_checkout, spec, message):
    path = small_checkout / "spec.json"
    path.write_text(json.dumps(spec))
    before = snapshot(small_checkout)
    result = _init(small_checkout, "spec_comp", "--spec", str(path))
    assert result.exit_code == 1 and message in result.output, result.output
    assert snapshot(small_checkout) == before


def test_init_refuses_cycles_the_feed_cannot_price_within_the_staleness_bound(small_checkout):
    """20 s cycles on 60 s candles with a 30 s bound: one cycle in three finds only a 40 s old
    candle and could never be resolved (it would be voided after an hour). Refused, with the
    scope, the granularity, the bound and the fixes; each fix alone is accepted."""
    path = small_checkout / "spec.json"
    scope = {"name": "fast", "subject": "BTC", "prediction_interval_seconds": 20, "resolve_horizon_seconds": 60}
    path.write_text(json.dumps({"spec_version": "1", "slug": "fast_comp", "scopes": [scope],
                                "feed": {"kind": "candle", "granularity_seconds": 60}}))
    before = snapshot(small_checkout)
    result = _init(small_checkout, "fast_comp", "--spec", str(path))
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "scope BTC-60-20: a cycle every 20 s on 60 s candles finds the newest observation up to 40 s old" in out
    assert "over max_price_staleness_seconds (30 s): 1 cycle(s) in 3 can never be resolved" in out
    assert "use one of: prediction_interval_seconds 30; 20 s candles" in out and "max_price_staleness_seconds 40" in out
    assert snapshot(small_checkout) == before
    doctor = CliRunner().invoke(cli, ["doctor", "--spec", str(path)])
    assert doctor.exit_code == 1 and "scope BTC-60-20" in doctor.output and "fix: " in doctor.output
    for fix in ({"scopes": [{**scope, "prediction_interval_seconds": 30}]}, {"feed": {"kind": "candle", "granularity_seconds": 20}},
                {"max_price_staleness_seconds": 40}):
        path.write_text(json.dumps({"spec_version": "1", "slug": "fast_comp", "scopes": [scope],
                                    "feed": {"kind": "candle", "granularity_seconds": 60}, **fix}))
        fixed = CliRunner().invoke(cli, ["doctor", "--spec", str(path)])
        assert fixed.exit_code == 0 and "no problem" in fixed.output, (fix, fixed.output)


def test_init_refuses_a_spec_that_is_not_json(small_checkout):
    path = small_checkout / "spec.json"
    path.write_text('{"spec_version": "1",}')
    result = _init(small_checkout, "spec_comp", "--spec", str(path))
    assert result.exit_code == 1 and "not valid JSON" in result.output and "line 1" in result.output


def test_a_spec_file_merges_over_its_pack(small_checkout):
    from crunch_assets.scaffold.config import resolve
    from crunch_assets.scaffold.generate import render

    path = small_checkout / "spec.json"
    path.write_text(json.dumps({
        "spec_version": "1", "slug": "eth_cup", "pack": "tournament",
        "scopes": [{"name": "two_minutes", "subject": "ETH", "prediction_interval_seconds": 120, "resolve_horizon_seconds": 120}],
        "emission": {"kind": "softmax", "temperature": 0.5},
        "start": "2026-12-03T05:00:00+00:00",
        "callables": {"snapshot_aggregator": "crunch_assets.rules:mean_numeric_fields"},
    }))
    resolved = resolve(None, None, path)
    assert (resolved.slug, resolved.pack) == ("eth_cup", "tournament")
    config_source = next(f.content for f in render(resolved) if f.path == "competitions/eth_cup/config.py")
    namespace: dict = {"__file__": str(small_checkout / "competitions/eth_cup/config.py")}
    exec(compile(config_source, "config.py", "exec"), namespace)
    spec, rules = namespace["SPEC"], namespace["RULES"]
    assert [(s.subject, s.prediction_interval_seconds, s.name) for s in spec.scopes] == [("ETH", 120, "two_minutes")]
    assert (spec.emission.kind, spec.emission.temperature) == ("softmax", 0.5)
    assert spec.start.isoformat() == "2026-12-03T05:00:00+00:00"
    assert spec.description.startswith("In-sample")  # not in the spec file: the pack's
    assert rules.snapshot_aggregator == "crunch_assets.rules:mean_numeric_fields"
    assert rules.scoring_function == "competitions.eth_cup.logic:score_prediction"  # not named: the generated one


def test_a_write_that_fails_halfway_leaves_nothing_behind(small_checkout):
    from crunch_assets.scaffold.config import resolve
    from crunch_assets.scaffold.generate import render, write

    files = render(resolve("half_done", "baseline", None))
    # a file appears under the target while init writes (another process): init must not overwrite it
    clash = small_checkout / "challenges/half_done/README.md"
    clash.parent.mkdir(parents=True)
    clash.write_text("someone else's")
    before = snapshot(small_checkout)
    with pytest.raises(FileExistsError):
        write(small_checkout, files, "half_done")
    assert snapshot(small_checkout) == before
    assert not (small_checkout / "competitions/half_done").exists()


# --- doctor -----------------------------------------------------------------------------------------


def test_doctor_passes_a_generated_competition(checkout):
    result = crunch(checkout, "doctor", "scaffold_tournament")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "doctor scaffold_tournament: no problem (workspace.yaml, spec, wiring, models, feed 'synthetic', cadence checked)" in result.stdout


def test_doctor_reports_every_broken_callable_and_unservable_subject(tmp_path, database_url):
    root = copy_checkout(tmp_path / "checkout")
    assert crunch(root, "init", "broken_comp").returncode == 0
    config = root / "competitions/broken_comp/config.py"
    source = config.read_text()
    source = source.replace("logic:score_prediction", "logic:score_predictions")
    source = source.replace("competitions.broken_comp.schemas:ModelOutput", "competitions.broken_comp.nowhere:ModelOutput")
    source = source.replace('Scope(subject="BTC"', 'Scope(subject="DOGEX"')
    config.write_text(source)
    workspace = root / "workspace.yaml"
    workspace.write_text(workspace.read_text().replace("competitions.broken_comp.definitions", "competitions.broken_comp.defs"))

    result = crunch(root, "doctor", "broken_comp", CRUNCH_BROKEN_COMP_FEED="binance")
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "doctor broken_comp: 4 problem(s)" in out
    assert "RULES.scoring_function: scoring_function: module 'competitions.broken_comp.logic' has no attribute 'score_predictions'" in out
    assert "RULES.output_schema: output_schema: cannot import module 'competitions.broken_comp.nowhere'" in out
    assert "feed 'binance', subject 'DOGEX': binance: subject 'DOGEX' has no Binance symbol" in out
    assert "workspace.yaml has no code location for 'broken_comp'" in out
    assert out.count("   fix: ") == 4

    # the synthetic feed serves any subject: only the wiring and the workspace are wrong then
    synthetic = crunch(root, "doctor", "broken_comp")
    assert synthetic.returncode == 1 and "doctor broken_comp: 3 problem(s)" in synthetic.stdout


def test_doctor_explains_a_competition_whose_cycles_the_feed_cannot_price(tmp_path, database_url):
    """A generated competition edited to 20 s cycles on its 60 s candles: doctor names the scope,
    the granularity and the bound, and what to change; the code location refuses to load."""
    root = copy_checkout(tmp_path / "checkout")
    assert crunch(root, "init", "cadence_comp").returncode == 0
    config = root / "competitions/cadence_comp/config.py"
    source = config.read_text()
    assert "prediction_interval_seconds=60" in source
    config.write_text(source.replace("prediction_interval_seconds=60", "prediction_interval_seconds=20"))
    result = crunch(root, "doctor", "cadence_comp")
    assert result.returncode == 1, result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    assert "doctor cadence_comp: 1 problem(s)" in out
    assert ("scope BTC-60-20: a cycle every 20 s on 60 s candles finds the newest observation up to 40 s old at a cycle "
            "instant and at its resolution instant (cycle + 60 s), over max_price_staleness_seconds (30 s)") in out
    assert "fix: change one of: prediction_interval_seconds 30; 20 s candles" in out
    load = run(root, sys.executable, "-c", "import competitions.cadence_comp.definitions")
    assert load.returncode != 0 and "SpecError: scope BTC-60-20" in load.stderr


def test_doctor_checks_a_spec_file(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({
        "spec_version": "1", "slug": "spec_only",
        "scopes": [{"name": "a", "subject": "DOGEX", "prediction_interval_seconds": 60, "resolve_horizon_seconds": 60}],
        "callables": {"scoring_function": "nowhere.scoring:score", "input_builder": "competitions.spec_only.logic:later"},
    }))
    runner = CliRunner()
    result = runner.invoke(cli, ["doctor", "--spec", str(spec)], env={"CRUNCH_SPEC_ONLY_FEED": "binance"})
    assert result.exit_code == 1, result.output
    assert "RULES.scoring_function: scoring_function: cannot import module 'nowhere.scoring'" in result.output
    assert "feed 'binance', subject 'DOGEX'" in result.output
    assert "input_builder" not in result.output  # inside the module init generates: checked after init
    spec.write_text(json.dumps({"spec_version": "1", "scopes": [{"name": "a", "subjcet": "BTC"}]}))
    typo = runner.invoke(cli, ["doctor", "--spec", str(spec), "--pack", "realtime"])
    assert typo.exit_code == 1 and "did you mean 'subject'?" in typo.output and "fix: " in typo.output
    usage = runner.invoke(cli, ["doctor"])
    assert usage.exit_code == 2


@pytest.mark.integration  # runs the console script
def test_every_command_has_help():
    runner = CliRunner()
    for command in ("init", "doctor", "replay", "verify"):
        result = runner.invoke(cli, [command, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, command
    console_script = subprocess.run([str(BIN / "crunch-dagster"), "--help"], capture_output=True, text=True, timeout=120)
    assert console_script.returncode == 0
    assert all(name in console_script.stdout for name in ("init", "doctor", "replay", "verify", "audit"))
