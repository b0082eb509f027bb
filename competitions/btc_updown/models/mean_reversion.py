"""Quickstarter: prices drift back to their recent mean."""

import math

from competitions.btc_updown.model_base import UpDownModel


class MeanReversion(UpDownModel):
    def predict(self, subject, resolve_horizon_seconds, step_seconds):
        closes = self.closes()[-5:]
        if len(closes) < 3:
            return {"p_up": 0.5}
        mean = sum(closes) / len(closes)
        signal = -0.7 * (closes[-1] - mean) / mean
        return {"p_up": 0.5 + 0.5 * math.tanh(signal * 400.0)}
