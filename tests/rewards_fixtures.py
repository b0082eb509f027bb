"""Deterministic participants for reward tests on the synthetic feed (whose price of any minute is
computable): an oracle that always knows the next close, its opposite, a coin flip, and a model
that changes sides with the hour. Brier skill: oracle 1.0, anti 0.0, coin 0.75 on every cycle."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg

from crunch_assets.keys import ChainKeys
from crunch_assets.replay import RANGE_END_TAG, RANGE_START_TAG, chain_assets

# A sandboxed model sees nothing of the checkout but its base class: the oracle carries its own
# copy of the synthetic feed's price function (stdlib only).
SYNTHETIC_PRICES_SOURCE = (Path(__file__).resolve().parents[1] / "resources" / "feeds" / "synthetic_prices.py").read_text()
MODEL_HEADER = SYNTHETIC_PRICES_SOURCE + """

from competitions.btc_updown.model_base import UpDownModel


def went_up(asof):
    # the engine's truth: the close observed at asof + 60 s against the one at asof (6 decimals)
    return round(synthetic_price("BTC", asof + 60), 6) > round(synthetic_price("BTC", asof), 6)

"""

MODELS = {
    "oracle": "        return {'p_up': 1.0 if went_up(self.latest['asof_ts']) else 0.0}",
    "anti": "        return {'p_up': 0.0 if went_up(self.latest['asof_ts']) else 1.0}",
    "coin": "        return {'p_up': 0.5}",
    # wrong in even hours, right in odd ones
    "switch": "        right = (self.latest['asof_ts'] // 3600) % 2 == 1\n"
              "        return {'p_up': float(went_up(self.latest['asof_ts']) == right)}",
}


def write_models(directory: Path, names: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / f"{name}.py").write_text(
            MODEL_HEADER + "\nclass Model(UpDownModel):\n    def predict(self, subject, resolve_horizon_seconds, step_seconds):\n"
            + MODELS[name] + "\n"
        )
    return directory


def competition(spec, models_dir: Path, **overrides):
    from competitions.btc_updown.definitions import build_definitions
    from resources.feeds.synthetic import SyntheticFeed
    from resources.model_runners.local import LocalModelRunner

    return build_definitions(spec=spec, feed=SyntheticFeed(), automation_running=False,
                             model_runner=LocalModelRunner(models_dir=str(models_dir), call_timeout_seconds=5.0),
                             **overrides)


def hour_key(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%d-%H:00")


def materialize_hours(defs, spec, names: list[str], first: datetime, last: datetime, **kwargs):
    """One run over the hourly partitions first .. last (a backfill range)."""
    keys = ChainKeys.for_slug(spec.slug)
    return dg.materialize(
        chain_assets(defs, [getattr(keys, name) for name in names]), resources=defs.resources,
        tags={RANGE_START_TAG: hour_key(first), RANGE_END_TAG: hour_key(last)}, **kwargs,
    )


def materialize_one(defs, spec, name: str, partition_key: str, **kwargs):
    keys = ChainKeys.for_slug(spec.slug)
    return dg.materialize(chain_assets(defs, [getattr(keys, name)]), resources=defs.resources,
                          partition_key=partition_key, **kwargs)


def spec_for(start: datetime, **changes):
    from competitions.btc_updown.definitions import SPEC

    return replace(SPEC, start=start, **changes)


def hours(start: datetime, n: int) -> list[datetime]:
    return [start + timedelta(hours=h) for h in range(n)]
