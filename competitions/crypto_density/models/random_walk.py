"""No drift, the recent volatility scaled to the horizon."""
from competitions.crypto_density.model_base import DensityModel


class RandomWalk(DensityModel):
    def predict(self, subject, resolve_horizon_seconds, step_seconds):
        returns = self.returns_bps(subject)
        return self.normal(0.0, self.spread(returns, resolve_horizon_seconds / 300))
