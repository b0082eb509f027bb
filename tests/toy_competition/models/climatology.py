from tests.toy_competition.model_base import ToyModel


class Climatology(ToyModel):
    def forecast(self, station):
        return {"probabilities": {"cold": 1 / 3, "mild": 1 / 3, "hot": 1 / 3}}
