"""The synthetic feed's price of any subject at any instant: pure arithmetic, no Dagster, so the
same numbers are available to tests and to model processes that must stay light."""

from __future__ import annotations

import hashlib
import math
import struct

# (period in minutes, amplitude in log-price): layered smooth noise looks like a market with
# intraday wiggles and multi-day trends, yet each minute is O(len(OCTAVES)) to compute.
OCTAVES: tuple[tuple[int, float], ...] = ((3, 0.0006), (17, 0.0015), (97, 0.004), (601, 0.012), (4001, 0.05))
JITTER = 0.00025


def uniform(*key: object) -> float:
    """A reproducible uniform number in [-1, 1) for a key (blake2b, not Python's salted hash)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return struct.unpack("<Q", digest)[0] / 2**63 - 1.0


def _smooth_noise(subject: str, octave: int, x: float) -> float:
    left = math.floor(x)
    fraction = x - left
    weight = (1 - math.cos(math.pi * fraction)) / 2  # cosine interpolation: continuous, smooth
    return uniform(subject, octave, left) * (1 - weight) + uniform(subject, octave, left + 1) * weight


def base_price(subject: str) -> float:
    """A plausible level per subject; unknown subjects get a stable level from their name."""
    known = {"BTC": 95_000.0, "ETH": 3_300.0, "SOL": 190.0}
    return known.get(subject, 50.0 + 50.0 * (uniform("base", subject) + 1.0))


def synthetic_price(subject: str, unix_seconds: float) -> float:
    minutes = unix_seconds / 60.0
    log_offset = sum(
        amplitude * _smooth_noise(subject, index, minutes / period)
        for index, (period, amplitude) in enumerate(OCTAVES)
    )
    return base_price(subject) * math.exp(log_offset)
