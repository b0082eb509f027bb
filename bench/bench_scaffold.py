"""From nothing to a replayed competition: `crunch-dagster init` per pack (console script, median of
--repeats slugs) into a temporary copy of the checkout, then `crunch-dagster replay` of --hours hours
of each generated competition on a fresh embedded PostgreSQL, its runs recorded in a Dagster
instance configured by the checkout's dagster.yaml (PostgreSQL, as deployed), median of --repeats
(a repeat replays an already replayed range, which writes nothing).

    .venv/bin/python bench/bench_scaffold.py [--repeats 5] [--packs baseline,realtime,tournament] [--hours 3] [--smoke]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
from bench import benchkit  # noqa: E402

BIN = Path(sys.executable).parent
PACKS = ("baseline", "realtime", "tournament")
FROM = datetime(2026, 11, 2, tzinfo=timezone.utc)


def timed(args: list[str], cwd: Path, env: dict) -> float:
    began = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--packs", default=",".join(PACKS))
    parser.add_argument("--hours", type=int, default=3, help="hours replayed")
    benchkit.add_smoke_argument(parser)
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.packs, args.hours = 1, "baseline", 1
    benchkit.smoke_banner(args)
    packs = [pack for pack in args.packs.split(",") if pack]
    unknown = sorted(set(packs) - set(PACKS))
    if unknown:
        parser.error(f"--packs: unknown {unknown}; the packs are {', '.join(PACKS)}")
    start, end = FROM.isoformat(), (FROM + timedelta(hours=args.hours)).isoformat()
    work = benchkit.fresh_data_dir("crunch-bench-scaffold-")
    checkout = work / "checkout"
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True, check=True).stdout
    for relative in filter(None, listed.decode().split("\0")):
        if (PROJECT_ROOT / relative).is_file():
            (checkout / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / relative, checkout / relative)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUNCH_") and k != "DAGSTER_HOME"}
    dagster_home = work / "dagster_home"  # the deployment's instance: storage on the same PostgreSQL
    dagster_home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    env.update(PYTHONPATH=str(checkout), CRUNCH_AUTOMATION="off", CRUNCH_DATA_DIR=str(work / "data"),
               DAGSTER_HOME=str(dagster_home))
    cli = str(BIN / "crunch-dagster")
    benchkit.conditions(f"crunch-dagster init and replay of {args.hours} h, packs {', '.join(packs)}, "
                        f"{args.repeats} repeat(s), Dagster on PostgreSQL (dagster.yaml)")
    try:
        print(f"{'pack':<11} {'init s (median)':>16} {f'replay {args.hours} h s (median)':>22} {'first replay s':>15}")
        for pack in packs:
            init_seconds = [timed([cli, "init", f"bench_{pack}_{i}", "--pack", pack], checkout, env) for i in range(args.repeats)]
            slug = f"bench_{pack}_0"
            replay_env = {**env, f"CRUNCH_{slug.upper()}_START": start, f"CRUNCH_{slug.upper()}_CHECKPOINT_INTERVAL_SECONDS": "3600"}
            replays = [timed([cli, "replay", slug, "--from", start, "--to", end], checkout, replay_env)
                       for _ in range(args.repeats)]
            print(f"{pack:<11} {statistics.median(init_seconds):>16.2f} {statistics.median(replays):>22.2f} {replays[0]:>15.2f}")
            benchkit.figure(f"  {pack}: init {benchkit.band(init_seconds).describe()}; "
                            f"replay {benchkit.band(replays).describe()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
