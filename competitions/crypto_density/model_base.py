"""What a crypto_density participant implements. Imported inside each model's own process, so it
stays light (no Dagster, no pandas)."""

import math


class DensityModel:
    """Each cycle: feed_update(data), then predict(subject, resolve_horizon_seconds, step_seconds).

    data = {"asof_ts": <unix s>, "candles_5m": {"BTC": [{ts, open, high, low, close, volume}, ...],
            "ETH": [...], "SOL": [...]}}: every subject's 5-minute candles closed in the last 6 hours,
    oldest first (a model may use any subject to forecast any other).

    predict returns a density of the subject's return over the horizon, in basis points
    (10,000 x (price at the horizon - price now) / price now):
    {"type": "builtin", "name": "norm", "params": {"loc": m, "scale": s}} with s > 0, or
    {"type": "mixture", "components": [{"density": <a normal>, "weight": w}, ...]} (at most 16).
    It is scored by the CRPS of the realised return: lower is better.
    """

    def __init__(self) -> None:
        self.latest: dict = {}

    def feed_update(self, data: dict) -> None:
        self.latest = data

    def closes(self, subject: str) -> list[float]:
        return [candle["close"] for candle in self.latest.get("candles_5m", {}).get(subject, [])]

    def returns_bps(self, subject: str) -> list[float]:
        closes = self.closes(subject)
        return [10_000.0 * (b - a) / a for a, b in zip(closes, closes[1:])]

    @staticmethod
    def normal(loc: float, scale: float) -> dict:
        return {"type": "builtin", "name": "norm", "params": {"loc": loc, "scale": max(scale, 1e-6)}}

    @staticmethod
    def spread(returns: list[float], steps: float) -> float:
        """The standard deviation of a sum of `steps` such returns (random walk), at least 1 bp."""
        if len(returns) < 2:
            return 10.0 * math.sqrt(steps)
        mean = sum(returns) / len(returns)
        variance = sum((r - mean) ** 2 for r in returns) / (len(returns) - 1)
        return max(1.0, math.sqrt(variance * steps))

    def predict(self, subject: str, resolve_horizon_seconds: int, step_seconds: int) -> dict:
        raise NotImplementedError
