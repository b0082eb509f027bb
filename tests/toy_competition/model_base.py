"""A toy participant: given the last readings of a weather station, say how likely each weather
category is 30 minutes from now. Light: runs in the model's own process."""


class ToyModel:
    def __init__(self) -> None:
        self.readings: list[float] = []

    def observe(self, data: dict) -> None:
        self.readings = list(data["readings"])

    def forecast(self, station: str) -> dict:
        raise NotImplementedError
