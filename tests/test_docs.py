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
