"""The last hour's drift continues; the market leader (BTC) leads the others."""
from competitions.crypto_density.model_base import DensityModel


class Momentum(DensityModel):
    def predict(self, subject, resolve_horizon_seconds, step_seconds):
        steps = resolve_horizon_seconds / 300
        own = self.returns_bps(subject)[-12:]
        leader = self.returns_bps("BTC")[-12:]
        drift = 0.5 * (sum(own) / len(own) if own else 0.0) + 0.5 * (sum(leader) / len(leader) if leader else 0.0)
        return self.normal(drift * steps, self.spread(own, steps))
