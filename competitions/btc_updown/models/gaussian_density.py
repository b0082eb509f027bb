"""Quickstarter: a normal density of the return, from recent drift and volatility."""

import math

from competitions.btc_updown.model_base import UpDownModel


class GaussianDensity(UpDownModel):
    def predict(self, subject, resolve_horizon_seconds, step_seconds):
        closes = self.closes()[-31:]
        if len(closes) < 3:
            return {"p_up": 0.5}
        returns = [(b - a) / a for a, b in zip(closes, closes[1:])]
        mean = sum(returns) / len(returns)
        variance = sum((r - mean) ** 2 for r in returns) / max(1, len(returns) - 1)
        steps = max(1.0, resolve_horizon_seconds / 60.0)
        return {
            "type": "builtin",
            "name": "norm",
            "params": {"loc": mean * steps, "scale": math.sqrt(variance * steps)},
        }
