from tests.toy_competition.model_base import ToyModel


class WrongShape(ToyModel):
    def forecast(self, station):
        return {"probs": [0.2, 0.3, 0.5]}  # not the declared output schema
