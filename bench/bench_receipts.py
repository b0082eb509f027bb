"""What portable leaves and receipts cost: a checkpoint period of --models models x --cycles
one-minute cycles (default 100 x 1,440: a daily checkpoint, 144,000 leaves), in memory (the store's
read of the leaves is unchanged by this and timed by bench_rollups).

Prints, as the median over --repeats:
- hashing every leaf of the period under scheme 2 (Python's json.dumps and repr) and scheme 3
  (RFC 8785 via PyPI rfc8785, each cycle's truth hashed once), per period and per leaf: what the
  checkpoint build, the gate's merkle check, the audit and each receipt pay;
- building one model's receipt (every leaf hashed, the tree, the model's paths), its size as JSON;
- checking that receipt with the participants' standalone verifier (standard library only);
each figure with the machine's load. A receipt that does not verify stops the bench (the figures must
measure real work).

    .venv/bin/python bench/bench_receipts.py [--models 100] [--cycles 1440] [--repeats 3]
    .venv/bin/python bench/bench_receipts.py --smoke   # 3 models x 30 cycles, once: checks that it runs
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import random
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import benchkit  # noqa: E402
from crunch_assets import merkle  # noqa: E402
from crunch_assets.receipts import build_receipt  # noqa: E402
from resources.store import json_codec  # noqa: E402
from resources.store.rows import CheckpointRow, ScoreLeaf  # noqa: E402

START = datetime(2025, 1, 7, tzinfo=timezone.utc)
VERIFIER = Path(__file__).resolve().parents[1] / "crunch_assets/scaffold/templates/competition/verify_receipt.py.j2"


class InMemoryLeaves:
    def __init__(self, leaves: list[ScoreLeaf]):
        self.leaves = leaves

    def score_leaves(self, start, end) -> list[ScoreLeaf]:
        return self.leaves


def period(models: int, cycles: int) -> list[ScoreLeaf]:
    rng = random.Random(7)
    leaves = []
    for minute in range(cycles):
        at = START + timedelta(minutes=minute)
        truth = {"y_up": rng.random() < 0.5, "close": 94000 + rng.random() * 500, "previous_close": 94100.5}
        for m in range(models):
            p_up = rng.random()
            leaves.append(ScoreLeaf(f"model_{m:04d}", "BTC-60-60", at, {"p_up": p_up, "form": "p_up"}, truth,
                                    1 - (p_up - truth["y_up"]) ** 2))
    return leaves


def median_seconds(repeats: int, action) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - began)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--cycles", type=int, default=1440)
    parser.add_argument("--repeats", type=int, default=3)
    benchkit.add_smoke_argument(parser)
    options = parser.parse_args()
    if options.smoke:
        options.models, options.cycles, options.repeats = 3, 30, 1
    benchkit.smoke_banner(options)
    leaves = period(options.models, options.cycles)
    benchkit.conditions(f"portable leaves and receipts in memory, {options.models} models x {options.cycles} cycles: "
                        f"{len(leaves):,} leaves, median of {options.repeats}")
    for scheme in (merkle.ENTRIES_SCHEME, merkle.PORTABLE_SCHEME):
        seconds, _ = median_seconds(options.repeats, lambda s=scheme: merkle.merkle_root(merkle.leaf_hashes(leaves, s)))
        benchkit.figure(f"  scheme {scheme}: every leaf and the root  {seconds:8.2f} s  ({seconds / len(leaves) * 1e6:.1f} µs a leaf)")
    root = merkle.merkle_root(merkle.leaf_hashes(leaves))
    entries = {"ranking": [{"model_id": f"model_{m:04d}", "rank": m + 1, "reward_pct": 0, "eligible": True,
                            "score": 0.5, "cruncher_index": m, "breakdown": {"scored": options.cycles}}
                           for m in range(options.models)]}
    entries["ranking"][0]["reward_pct"] = 1_000_000_000
    entries_hash = merkle.entries_sha256(entries)
    checkpoint = CheckpointRow(1, START, START + timedelta(minutes=options.cycles), "PENDING", None, None, entries, root,
                               merkle.chain_with_entries(None, root, entries_hash), {"entries_sha256": entries_hash,
                                                                                     "previous_chained_root": None},
                               START, START, commitment_scheme=merkle.PORTABLE_SCHEME)
    seconds, receipt = median_seconds(options.repeats, lambda: build_receipt("bench", InMemoryLeaves(leaves), checkpoint,
                                                                            "model_0000"))
    served = json_codec.dumps(receipt).encode()
    benchkit.figure(f"  one model's receipt: built {seconds:8.2f} s, {len(receipt['leaves']):,} leaves, {len(served) / 2**20:.1f} MiB")
    loader = importlib.machinery.SourceFileLoader("verify_receipt", str(VERIFIER))
    verifier = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(verifier)
    seconds, verdict = median_seconds(options.repeats, lambda: verifier.verify_receipt(json.loads(served)))
    if verdict != "ok":
        raise SystemExit(f"the receipt does not verify: {verdict}")
    benchkit.figure(f"  verify_receipt.py (stdlib): {seconds:8.2f} s, verdict {verdict}")


if __name__ == "__main__":
    main()
