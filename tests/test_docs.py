"""The docs' examples are code that runs: docs/adding-a-competition.md's complete example is
extracted into a copy of the checkout, loaded as a code location and replayed."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOC = PROJECT_ROOT / "docs" / "adding-a-competition.md"


def doc_files(text: str) -> dict[str, str]:
    """Fenced python blocks whose first line names their file (`# competitions/...`)."""
    files = {}
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        first, _, rest = block.partition("\n")
        if first.startswith("# competitions/"):
            files[first[2:].strip()] = rest
    return files


def copy_checkout(target: Path) -> None:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        source = PROJECT_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def test_the_documented_competition_loads_and_replays(tmp_path, database_url):
    files = doc_files(DOC.read_text())
    assert {"competitions/eth_vol/definitions.py", "competitions/eth_vol/logic.py",
            "competitions/eth_vol/model_base.py"} <= set(files)
    checkout = tmp_path / "checkout"
    copy_checkout(checkout)
    for name, content in files.items():
        path = checkout / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    (checkout / "competitions" / "eth_vol" / "__init__.py").write_text("")
    script = textwrap.dedent("""
        from datetime import datetime, timedelta, timezone
        import dagster as dg
        import sqlalchemy as sa
        from competitions.eth_vol.definitions import SPEC, build_definitions
        from crunch_assets.replay import replay
        from resources.feeds.synthetic import SyntheticFeed
        from resources.store.database import engine_for

        defs = build_definitions(feed=SyntheticFeed(), automation_running=False)
        dg.Definitions.validate_loadable(defs)
        start = datetime(2026, 11, 20, tzinfo=timezone.utc)
        timings = replay(defs, SPEC, start, start + timedelta(hours=7))
        with engine_for().connect() as connection:
            scores = connection.execute(sa.text(
                "SELECT count(*), count(*) FILTER (WHERE success) FROM crunch.scores WHERE competition = 'eth_vol'")).one()
            checkpoint = connection.execute(sa.text(
                "SELECT entries FROM crunch.checkpoints WHERE competition = 'eth_vol'")).scalar_one()
        print("SCORES", scores[0], scores[1])
        print("CHECKPOINTS", timings.checkpoints)
        print("REWARDS", sum(r["reward_pct"] for r in checkpoint["ranking"]), [r["model_id"] for r in checkpoint["ranking"]])
        added = {r["model_id"]: r["breakdown"].get("contribution", {}).get("contribution") for r in checkpoint["ranking"]}
        print("CONTRIBUTIONS", sorted(m for m, c in added.items() if c is not None))
    """)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    result = subprocess.run([sys.executable, "-c", script], cwd=checkout, env={**environment, "PYTHONPATH": str(checkout)},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.split(" ", 1)[0].isupper())
    # 28 cycles (every 15 minutes for 7 hours) x (2 models + the ensemble), every one resolved
    assert lines["SCORES"] == "84 84"
    assert lines["CHECKPOINTS"] == "['2026-11-20-00:00']"
    assert lines["REWARDS"].startswith("1000000000 ")
    assert lines["REWARDS"].endswith("'__ensemble_mean__']")  # ranked, never paid: after the paid models
    assert lines["CONTRIBUTIONS"] == "['constant_vol', 'recent_vol']"


ARCHITECTURE = PROJECT_ROOT / "docs" / "architecture.md"
# Where a module path the docs name relative to a package is looked for.
MODULE_ROOTS = ("", "crunch_assets/", "resources/", "resources/store/")
# Backticked words in the docs that read as an asset check's name (a check's name says what holds).
CHECK_NAME_SHAPE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*_(?:on_time|has_every_\w+|are_\w+|follows_\w+|sum_to_\w+)$"
                              r"|^every_\w+_has_\w+$")


def tracked_files() -> set[str]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True, check=True).stdout
    return set(filter(None, listed.decode().split("\0")))


def test_every_module_path_in_the_architecture_exists():
    text = ARCHITECTURE.read_text()
    named = set(re.findall(r"(?<![\w/.<>-])((?:[\w.-]+/)*[\w-]+\.py)\b", text))
    assert {"crunch_assets/definitions.py", "crunch_assets/defs/live_window/sensor.py"} <= named
    tracked = tracked_files()
    basenames = {Path(name).name.removesuffix(".j2") for name in tracked}  # a challenge package's file is rendered
    missing = [name for name in sorted(named) if not (
        any((PROJECT_ROOT / root / name).is_file() for root in MODULE_ROOTS) if "/" in name else name in basenames)]
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"


def code_check_names() -> set[str]:
    from competitions.btc_updown.definitions import build_definitions
    from resources.feeds.synthetic import SyntheticFeed

    defs = build_definitions(feed=SyntheticFeed(), automation_running=False)
    return {key.name for key in defs.resolve_asset_graph().asset_check_keys}


def test_every_asset_check_the_docs_name_exists_and_the_architecture_names_every_one():
    checks = code_check_names()
    assert len(checks) == 9
    # the payout gate's checks (docs/api.md) are not asset checks
    gate_checks = set(re.findall(r'GateCheck\(\s*"(\w+)"', (PROJECT_ROOT / "crunch_assets" / "payouts.py").read_text()))
    assert "paid_models_are_eligible" in gate_checks
    named = {}
    for doc in sorted((PROJECT_ROOT / "docs").glob("*.md")) + [PROJECT_ROOT / "README.md"]:
        for word in re.findall(r"`([a-z_0-9]+)`", doc.read_text()):
            if word in checks or (CHECK_NAME_SHAPE.match(word) and word not in gate_checks):
                named.setdefault(word, doc.name)
    unknown = {word: doc for word, doc in named.items() if word not in checks}
    assert not unknown, f"the docs name asset checks the code does not define: {unknown}"
    stage_table = ARCHITECTURE.read_text().split("| stage | compute + asset factory", 1)[1].split("\n\n", 1)[0]
    assert checks == set(re.findall(r"`([a-z_0-9]+)`", stage_table)) & checks
