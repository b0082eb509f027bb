"""Quickstarter: recent direction persists."""

import math

from competitions.btc_updown.model_base import UpDownModel


class TrendFollowing(UpDownModel):
    def predict(self, subject, resolve_horizon_seconds, step_seconds):
        closes = self.closes()[-8:]
        if len(closes) < 3:
            return {"p_up": 0.5}
        signal = 0.6 * (closes[-1] - closes[0]) / closes[0]
        return {"p_up": 0.5 + 0.5 * math.tanh(signal * 400.0)}
