"""A test-only competition whose input is not a price at all: weather-station readings (a feed of
records of kind "reading" with no price), outcomes from an outcome ledger that is not the feed (a
GroundTruthResource), typed shapes (pydantic), a cross-sectional step (scores relative to the
field) and a proportional emission. It proves the engine carries no price or 60-second assumption.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pydantic

from crunch_assets.records import RecordsView
from crunch_assets.rules import GroundTruthResource, TruthUnavailable
from crunch_assets.spec import Scope
from resources.feeds.base import FeedFetchResult, FeedRecord, FeedResource
from resources.model_runners.base import MethodCall

CATEGORIES = ("cold", "mild", "hot")
READING_SECONDS = 600


def temperature(station: str, unix_seconds: int) -> float:
    """A deterministic daily cycle with a station offset."""
    offset = sum(map(ord, station)) % 7
    return round(15 + 9 * math.sin(2 * math.pi * unix_seconds / 86400) + offset - 3 + 2 * math.sin(unix_seconds / 997), 3)


def category(value: float) -> str:
    return "cold" if value < 10 else "hot" if value > 20 else "mild"


class StationFeed(FeedResource):
    """Readings every 10 minutes; a reading is known at its own time (granularity 0)."""

    kind: str = "reading"
    granularity_seconds: int = 0

    def source_name(self) -> str:
        return "toy_station"

    def fetch_records(self, subject, start, end, *, as_of):
        first = math.ceil(start.timestamp() / READING_SECONDS) * READING_SECONDS
        stop = min(end.timestamp(), as_of.timestamp() + 1e-6)
        records = [
            FeedRecord(subject, "reading", datetime.fromtimestamp(ts, tz=timezone.utc), {"temperature_c": temperature(subject, ts)})
            for ts in range(int(first), int(math.ceil(stop)), READING_SECONDS)
        ]
        return FeedFetchResult(records=records, pages_fetched=1)


class OutcomeLedger(GroundTruthResource):
    """What the station's authority publishes: the category at a given time. Published once the
    time has passed; a station listed as broken publishes nothing for its outage."""

    outage_start: str | None = None  # ISO times of a published outage: its outcomes never come
    outage_end: str | None = None

    @property
    def reads_feed(self) -> bool:
        return False

    def resolve(self, rules, scope, cycle_at, resolvable_at, records, max_staleness_seconds):
        if resolvable_at > datetime.now(timezone.utc):
            return None
        if self.outage_start and datetime.fromisoformat(self.outage_start) <= resolvable_at < datetime.fromisoformat(self.outage_end):
            raise TruthUnavailable("the station was out of service")
        value = temperature(scope.subject, int(resolvable_at.timestamp()))
        return {"temperature_c": value, "category": category(value)}


class ToyInput(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    station: str
    asof_ts: int
    readings: list[float] = pydantic.Field(max_length=6)


class ToyOutput(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    probabilities: dict[str, float]

    @pydantic.field_validator("probabilities")
    @classmethod
    def _a_distribution(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) != set(CATEGORIES):
            raise ValueError(f"probabilities must name exactly {list(CATEGORIES)}")
        if any(p < 0 for p in value.values()) or not math.isclose(sum(value.values()), 1.0, abs_tol=1e-6):
            raise ValueError("probabilities must be >= 0 and sum to 1")
        return value


class ToyScore(pydantic.BaseModel):
    value: float | None
    success: bool
    failed_reason: str | None = None
    log_score: float | None = None


def build_input(scope: Scope, cycle_at: datetime, records: RecordsView) -> dict:
    readings = [r.values["temperature_c"] for r in records.records(scope.subject, "reading")][-6:]
    return {"station": scope.subject, "asof_ts": int(cycle_at.timestamp()), "readings": readings}


def build_calls(scope: Scope, inference_input: dict) -> list[MethodCall]:
    return [MethodCall("observe", (inference_input,)), MethodCall("forecast", (scope.subject,))]


def validate(scope: Scope, output: dict) -> dict:
    return output  # the declared schema (ToyOutput) already checked it


def resolve(scope, cycle_at, resolvable_at, records, max_staleness_seconds):
    raise AssertionError("the toy competition's truth comes from the OutcomeLedger resource")


def log_score(scope: Scope, output: dict, ground_truth: dict) -> dict:
    p = max(output["probabilities"][ground_truth["category"]], 1e-9)
    return {"value": math.log(p), "success": True, "failed_reason": None, "log_score": math.log(p)}


def relative_to_field(scope: Scope, cycle_at: datetime, results: dict[str, dict]) -> dict[str, dict]:
    """Each successful model's share of the field it beats (ties count half)."""
    values = {model: result["value"] for model, result in results.items()}
    others = max(1, len(values) - 1)
    return {
        model: {**result, "value": sum(1.0 if values[model] > v else 0.5 if values[model] == v else 0.0
                                       for other, v in values.items() if other != model) / others}
        for model, result in results.items()
    }


def horizon_after(cycle_at: datetime, seconds: int) -> datetime:
    return cycle_at + timedelta(seconds=seconds)
