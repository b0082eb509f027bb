"""From nothing to a replayed competition: `crunch-dagster init` per pack (console script, median of
--repeats slugs) into a temporary copy of the checkout, then `crunch-dagster replay` of 3 hours of
each generated competition on a fresh embedded PostgreSQL (median of --repeats; a repeat replays
an already replayed range, which writes nothing).

    .venv/bin/python bench/bench_scaffold.py [--repeats 3]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PACKS = ("baseline", "realtime", "tournament")
FROM, TO = "2026-11-02T00:00:00+00:00", "2026-11-02T03:00:00+00:00"


def timed(args: list[str], cwd: Path, env: dict) -> float:
    began = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="crunch-bench-scaffold-"))
    work.chmod(0o755)
    checkout = work / "checkout"
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True, check=True).stdout
    for relative in filter(None, listed.decode().split("\0")):
        if (PROJECT_ROOT / relative).is_file():
            (checkout / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / relative, checkout / relative)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUNCH_") and k != "DAGSTER_HOME"}
    env.update(PYTHONPATH=str(checkout), CRUNCH_AUTOMATION="off", CRUNCH_DATA_DIR=str(work / "data"))
    cli = str(BIN / "crunch-dagster")
    try:
        print(f"{'pack':<11} {'init s (median)':>16} {'replay 3 h s (median)':>22} {'first replay s':>15}")
        for pack in PACKS:
            init_seconds = [timed([cli, "init", f"bench_{pack}_{i}", "--pack", pack], checkout, env) for i in range(args.repeats)]
            slug = f"bench_{pack}_0"
            replay_env = {**env, f"CRUNCH_{slug.upper()}_START": FROM, f"CRUNCH_{slug.upper()}_CHECKPOINT_INTERVAL_SECONDS": "3600"}
            replays = [timed([cli, "replay", slug, "--from", FROM, "--to", TO], checkout, replay_env) for _ in range(args.repeats)]
            print(f"{pack:<11} {statistics.median(init_seconds):>16.2f} {statistics.median(replays):>22.2f} {replays[0]:>15.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
