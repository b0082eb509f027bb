"""What a btc_updown participant implements. Imported inside each model's own process, so it
must stay light (no Dagster, no pandas)."""


class UpDownModel:
    """Each cycle: feed_update(data) with the recent candles, then predict(...).

    data = {"symbol": "BTC", "asof_ts": <unix s>, "candles_1m": [{ts, open, high, low, close, volume}, ...]}
    (closed 1-minute candles up to the cycle time, oldest first).

    predict returns {"p_up": p} with p in [0, 1], or a density of the return over the horizon:
    {"type": "builtin", "name": "norm", "params": {"loc": m, "scale": s}} or
    {"type": "mixture", "components": [{"density": {...}, "weight": w}, ...]}.
    """

    def __init__(self) -> None:
        self.latest: dict = {}

    def feed_update(self, data: dict) -> None:
        self.latest = data

    def closes(self) -> list[float]:
        return [candle["close"] for candle in self.latest.get("candles_1m", [])]

    def predict(self, subject: str, resolve_horizon_seconds: int, step_seconds: int) -> dict:
        raise NotImplementedError
