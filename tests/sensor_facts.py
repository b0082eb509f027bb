"""Plain facts for the sensor decision tests: a btc_updown spec started on a known day, its
partitions and keys. No database, no Dagster instance, no clock."""

from dataclasses import replace
from datetime import datetime, timezone

from competitions.btc_updown.definitions import SPEC as BTC_SPEC
from crunch_assets.keys import ChainKeys
from crunch_assets.partitions import build_partitions

START = datetime(2026, 11, 3, tzinfo=timezone.utc)
SPEC = replace(BTC_SPEC, start=START)  # one-minute cycles, 60 s horizon, weekly checkpoints
PARTITIONS = build_partitions(SPEC)
KEYS = ChainKeys.for_slug(SPEC.slug)


def at(day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, second, tzinfo=timezone.utc)
