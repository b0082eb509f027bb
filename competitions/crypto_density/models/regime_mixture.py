"""Calm most of the time, sometimes turbulent: a two-normal mixture weighted by the recent regime."""
from competitions.crypto_density.model_base import DensityModel


class RegimeMixture(DensityModel):
    def predict(self, subject, resolve_horizon_seconds, step_seconds):
        steps = resolve_horizon_seconds / 300
        returns = self.returns_bps(subject)
        calm = self.spread(returns[-72:], steps)
        recent = self.spread(returns[-6:], steps)
        turbulent_weight = min(0.8, max(0.1, recent / (calm + recent)))
        return {"type": "mixture", "components": [
            {"density": self.normal(0.0, calm * 0.8), "weight": 1.0 - turbulent_weight},
            {"density": self.normal(0.0, calm * 2.0), "weight": turbulent_weight},
        ]}
