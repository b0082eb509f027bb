"""What a competition declares: scopes, schedule, windows, and the policies that decide rewards,
checked when the code location loads (an error names the field and what to change)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import Sequence

from crunch_assets.strict import refuse_unknown_fields

SLUG_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
HOUR_SECONDS = 3600
DAY_SECONDS = 86400
WEEK_SECONDS = 7 * DAY_SECONDS
MAX_HORIZON_SECONDS = WEEK_SECONDS


class SpecError(ValueError):
    """A competition's declaration is wrong; the message names the field."""


class Declared:
    """The base of every declaration in a spec (each dataclass below inherits it): a keyword that
    is not one of its fields is refused when the spec is built, also through dataclasses.replace,
    with the field's name and the nearest valid one (SpecError), never ignored."""

    __slots__ = ()

    def __new__(cls, *args, **kwargs):
        if kwargs:
            refuse_unknown_fields(cls.__name__, kwargs, [f.name for f in fields(cls) if f.init], SpecError)
        return super().__new__(cls)


@dataclass(frozen=True)
class Scope(Declared):
    """One prediction config: what is predicted, how often, when it resolves, and its weight in
    the combined leaderboard."""

    subject: str
    resolve_horizon_seconds: int
    prediction_interval_seconds: int
    step_seconds: int | None = None
    weight: float = 1.0
    name: str | None = None  # a label for reports (e.g. "in-sample"); the key stays derived

    @property
    def key(self) -> str:
        return f"{self.subject}-{self.resolve_horizon_seconds}-{self.prediction_interval_seconds}"

    @property
    def effective_step_seconds(self) -> int:
        return self.step_seconds or self.resolve_horizon_seconds

    @property
    def horizon(self) -> timedelta:
        return timedelta(seconds=self.resolve_horizon_seconds)

    def as_dict(self) -> dict:
        return {
            "subject": self.subject,
            "resolve_horizon_seconds": self.resolve_horizon_seconds,
            "prediction_interval_seconds": self.prediction_interval_seconds,
            "step_seconds": self.effective_step_seconds,
        }


@dataclass(frozen=True)
class LeaderboardWindow(Declared):
    name: str
    seconds: int


DEFAULT_WINDOWS = (
    LeaderboardWindow("score_recent", DAY_SECONDS),
    LeaderboardWindow("score_steady", 3 * DAY_SECONDS),
    LeaderboardWindow("score_anchor", WEEK_SECONDS),
)


@dataclass(frozen=True)
class FailurePolicy(Declared):
    """What a FAILED or ABSENT prediction scores, and what a model missing from a cycle counts at.

    - constant(v): always v (the worst possible score, when the score is bounded);
    - relative(p): the p-th percentile of the cycle's successful scores counted from the best
      (p=100: the worst answer of the cycle, as Synth does), for unbounded scores that have no
      worst value. A cycle in which no model answered usefully has no relative value: it is voided.
    """

    kind: str
    value: float | None = None
    percentile: float = 100.0

    @classmethod
    def constant(cls, value: float) -> "FailurePolicy":
        return cls("constant", value=float(value))

    @classmethod
    def relative(cls, percentile: float = 100.0) -> "FailurePolicy":
        return cls("relative", percentile=float(percentile))

    def validate(self) -> None:
        if self.kind == "constant":
            if self.value is None or not math.isfinite(self.value):
                raise SpecError(f"failure_policy: a constant failure value must be a finite number, got {self.value!r}")
        elif self.kind == "relative":
            if not 0.0 <= self.percentile <= 100.0:
                raise SpecError(f"failure_policy: percentile must be in [0, 100], got {self.percentile}")
        else:
            raise SpecError(f"failure_policy: kind must be 'constant' or 'relative', got {self.kind!r}")

    def value_for(self, successful_values: Sequence[float], higher_is_better: bool) -> float | None:
        """The cycle's failure value; None when a relative policy has no successful value."""
        if self.kind == "constant":
            return self.value
        if not successful_values:
            return None
        best_first = sorted(successful_values, reverse=higher_is_better)
        position = (len(best_first) - 1) * self.percentile / 100.0
        lower = math.floor(position)
        upper = min(lower + 1, len(best_first) - 1)
        fraction = position - lower
        return best_first[lower] + (best_first[upper] - best_first[lower]) * fraction

    def describe(self) -> str:
        if self.kind == "constant":
            return f"constant {self.value}"
        return "the worst successful score of the cycle" if self.percentile == 100 else (
            f"the {self.percentile:g}th percentile (from the best) of the cycle's successful scores"
        )


@dataclass(frozen=True)
class Eligibility(Declared):
    """Who is ranked over what, identically on the leaderboard and at the checkpoint.

    - every_cycle (default): every model with a prediction in the period is ranked over every
      counted cycle of it; cycles it has no prediction in (before it joined, after it left) count
      at the cycle's failure value, as ABSENT does. A late joiner cannot win on a few lucky cycles.
    - min_coverage(f): a model is ranked on its own scored cycles, and listed but not paid when it
      has predictions in fewer than a fraction f of the period's counted cycles.
    """

    mode: str = "every_cycle"
    min_coverage: float = 0.0

    @classmethod
    def every_cycle(cls) -> "Eligibility":
        return cls("every_cycle")

    @classmethod
    def minimum_coverage(cls, fraction: float) -> "Eligibility":
        return cls("min_coverage", float(fraction))

    @property
    def pads_missing_cycles(self) -> bool:
        return self.mode == "every_cycle"

    def validate(self) -> None:
        if self.mode not in ("every_cycle", "min_coverage"):
            raise SpecError(f"eligibility: mode must be 'every_cycle' or 'min_coverage', got {self.mode!r}")
        if not 0.0 <= self.min_coverage <= 1.0:
            raise SpecError(f"eligibility: min_coverage must be in [0, 1], got {self.min_coverage}")


@dataclass(frozen=True)
class EmissionPolicy(Declared):
    """How a checkpoint's ranked, eligible models share 1,000,000,000 frac64 (see emission.py).

    - tiered(tiers): the reference tiers by rank (default 35 % / 10 % x 4 / 5 % x 5; what fewer
      models leave unclaimed is split equally);
    - softmax(temperature): shares proportional to exp(score / temperature) (direction-aware);
    - proportional(floor_pct): every model gets floor_pct %, the rest is split in proportion to how
      far each score is above the worst one.
    """

    kind: str = "tiered"
    tiers_pct: tuple[tuple[int, float], ...] = ((1, 35.0), (5, 10.0), (10, 5.0))
    temperature: float = 1.0
    floor_pct: float = 0.0

    @classmethod
    def tiered(cls, tiers_pct: tuple[tuple[int, float], ...] = ((1, 35.0), (5, 10.0), (10, 5.0))) -> "EmissionPolicy":
        return cls("tiered", tiers_pct=tuple(tiers_pct))

    @classmethod
    def softmax(cls, temperature: float) -> "EmissionPolicy":
        return cls("softmax", temperature=float(temperature))

    @classmethod
    def proportional(cls, floor_pct: float = 0.0) -> "EmissionPolicy":
        return cls("proportional", floor_pct=float(floor_pct))

    def validate(self) -> None:
        if self.kind == "tiered":
            last = 0
            for last_rank, pct in self.tiers_pct:
                if last_rank <= last or pct < 0:
                    raise SpecError(f"emission: tiers must have increasing last ranks and pct >= 0, got {self.tiers_pct}")
                last = last_rank
            pcts = [pct for _, pct in self.tiers_pct]
            if any(a < b for a, b in zip(pcts, pcts[1:])):
                raise SpecError(f"emission: a later tier cannot pay more per rank than an earlier one: {self.tiers_pct}")
            total = 0.0
            previous = 0
            for last_rank, pct in self.tiers_pct:
                total += (last_rank - previous) * pct
                previous = last_rank
            if total > 100.0 + 1e-9:
                raise SpecError(f"emission: tiers give {total} % > 100 %")
        elif self.kind == "softmax":
            if not (math.isfinite(self.temperature) and self.temperature > 0):
                raise SpecError(f"emission: softmax temperature must be > 0, got {self.temperature}")
        elif self.kind == "proportional":
            if not 0.0 <= self.floor_pct <= 100.0:
                raise SpecError(f"emission: floor_pct must be in [0, 100], got {self.floor_pct}")
        else:
            raise SpecError(f"emission: kind must be 'tiered', 'softmax' or 'proportional', got {self.kind!r}")


@dataclass(frozen=True)
class CompetitionSpec(Declared):
    slug: str
    start: datetime  # first partition; timezone-aware UTC, on an hour boundary
    scopes: tuple[Scope, ...]
    failure_policy: FailurePolicy
    # Subjects the inputs may read besides the scopes' own (cross-asset inputs).
    extra_subjects: tuple[str, ...] = ()
    checkpoint_interval_seconds: int = WEEK_SECONDS  # any whole number of hours
    leaderboard_windows: tuple[LeaderboardWindow, ...] = DEFAULT_WINDOWS
    ranking_key: str = "score_recent"
    ranking_descending: bool = True  # True: higher scores are better
    # What the checkpoint ranks by: "period" (the period's mean under the eligibility policy, the
    # default) or the name of a leaderboard window (its value as of the period's end).
    checkpoint_ranking: str = "period"
    eligibility: Eligibility = field(default_factory=Eligibility)
    emission: EmissionPolicy = field(default_factory=EmissionPolicy)
    # What a model sees before predicting: records observed in the last history_seconds.
    history_seconds: int = HOUR_SECONDS
    # Ground truth needs a price observed at most this long before the instant it prices; it must
    # be shorter than every horizon, or the entry price could stand in for the resolved one.
    max_price_staleness_seconds: int = 30
    # Extra wait after a prediction resolves before it is scored (late feed rows).
    settle_delay_seconds: int = 0
    # Fault policy: after this many FAILED cycles in a row a model is not called for the cool-down
    # (0 disables quarantine).
    quarantine_after_failures: int = 5
    quarantine_cooldown_seconds: int = 600
    # A cycle whose ground truth is still missing this long after it resolved is VOIDED: neither
    # scored nor penalised. Decided by the stored feed (it has moved past that time without the
    # price), or, live, by the clock.
    void_after_seconds: int = 3600
    # How long a live tick waits for the feed before the cycle waits for the next tick.
    live_feed_wait_seconds: float = 10.0
    # Feed rows older than this (by market time) are deleted once archived to Parquet.
    feed_retention_days: int = 90
    # Live feed polling between cycles (keeps ground truth fresh when cycles are sparse).
    feed_poll_interval_seconds: int = 30
    # Live catch-up bound: missed cycles older than this are not run live (backfill them).
    max_catchup_seconds: int = 15 * 60
    # The cycle sensor launches an hour's live run this long before the hour, so its process has
    # booted by then; the run waits for each cycle's due time before it reads anything (cutoff = T).
    cycle_lead_seconds: int = 30
    # The live run does each cycle at its due time; the sensors only keep it going and cover the rest.
    # Each sensor tick costs CPU in the code server and the daemon and a ~1 KB row in Dagster's storage.
    cycle_sensor_interval_seconds: int = 30
    # The catch-up sensors cover what no live run does (a pause, a backfill's hours, a new model),
    # so they tick every 5 minutes.
    settlement_sensor_interval_seconds: int = 300
    # A model that appears in the runner is registered within this (and predicts from its next cycle).
    registry_sensor_interval_seconds: int = 300
    # How often the lag checks are judged (a changed verdict is recorded at once).
    lag_sensor_interval_seconds: int = 300
    # Keys of a stored model input the report API may show participants (none by default).
    public_input_keys: tuple[str, ...] = ()
    description: str = ""
    # What a score is, for people (the page says it with its direction), e.g. "CRPS of the
    # predicted return density, in basis points". Empty: the page says "score".
    score_name: str = ""

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        if not SLUG_PATTERN.match(self.slug):
            raise SpecError(f"slug {self.slug!r} must match {SLUG_PATTERN.pattern} (it prefixes asset keys)")
        if self.start.tzinfo is None or self.start.utcoffset() != timedelta(0):
            raise SpecError(f"start must be timezone-aware UTC, got {self.start!r}")
        if self.start != self.start.replace(minute=0, second=0, microsecond=0):
            raise SpecError(f"start must be on an hour boundary, got {self.start.isoformat()}")
        if not self.scopes:
            raise SpecError("scopes: a competition needs at least one prediction scope")
        keys = [scope.key for scope in self.scopes]
        if len(set(keys)) != len(keys):
            raise SpecError(f"scopes: duplicate scope keys {keys}")
        for scope in self.scopes:
            if not scope.subject:
                raise SpecError("scopes: every scope needs a subject")
            if not 1 <= scope.prediction_interval_seconds <= WEEK_SECONDS:
                raise SpecError(f"scope {scope.key}: prediction_interval_seconds must be in [1, {WEEK_SECONDS}]")
            if not 0 < scope.resolve_horizon_seconds <= MAX_HORIZON_SECONDS:
                raise SpecError(f"scope {scope.key}: resolve_horizon_seconds must be in (0, {MAX_HORIZON_SECONDS}] (7 days)")
            if scope.step_seconds is not None and scope.step_seconds <= 0:
                raise SpecError(f"scope {scope.key}: step_seconds must be > 0")
            if not (math.isfinite(scope.weight) and scope.weight > 0):
                raise SpecError(f"scope {scope.key}: weight must be a positive number, got {scope.weight}")
            if self.max_price_staleness_seconds >= scope.resolve_horizon_seconds:
                raise SpecError(
                    f"max_price_staleness_seconds ({self.max_price_staleness_seconds}) must be smaller than scope "
                    f"{scope.key}'s horizon ({scope.resolve_horizon_seconds} s): otherwise a missing resolution "
                    "price could be read from an observation before the cycle"
                )
        if self.max_price_staleness_seconds <= 0:
            raise SpecError("max_price_staleness_seconds must be > 0")
        if self.checkpoint_interval_seconds <= 0 or self.checkpoint_interval_seconds % HOUR_SECONDS:
            raise SpecError(
                f"checkpoint_interval_seconds must be a positive whole number of hours, got {self.checkpoint_interval_seconds}"
            )
        window_names = [window.name for window in self.leaderboard_windows]
        if not window_names or len(set(window_names)) != len(window_names):
            raise SpecError(f"leaderboard_windows: need unique names, got {window_names}")
        for window in self.leaderboard_windows:
            if window.seconds <= 0 or window.seconds % HOUR_SECONDS:
                raise SpecError(f"leaderboard window {window.name}: seconds must be a positive whole number of hours")
        if self.ranking_key not in window_names:
            raise SpecError(f"ranking_key {self.ranking_key!r} is not a leaderboard window; windows: {window_names}")
        if self.checkpoint_ranking != "period" and self.checkpoint_ranking not in window_names:
            raise SpecError(
                f"checkpoint_ranking {self.checkpoint_ranking!r} must be 'period' or a leaderboard window: {window_names}"
            )
        if not isinstance(self.failure_policy, FailurePolicy):
            raise SpecError("failure_policy must be a FailurePolicy (FailurePolicy.constant(v) or .relative(p))")
        self.failure_policy.validate()
        self.eligibility.validate()
        self.emission.validate()
        for name in ("history_seconds", "void_after_seconds", "feed_retention_days", "feed_poll_interval_seconds",
                     "max_catchup_seconds", "cycle_sensor_interval_seconds", "settlement_sensor_interval_seconds",
                     "registry_sensor_interval_seconds", "lag_sensor_interval_seconds"):
            if getattr(self, name) <= 0:
                raise SpecError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("settle_delay_seconds", "quarantine_after_failures", "quarantine_cooldown_seconds", "cycle_lead_seconds"):
            if getattr(self, name) < 0:
                raise SpecError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def subjects(self) -> list[str]:
        return sorted({scope.subject for scope in self.scopes} | set(self.extra_subjects))

    @property
    def max_horizon_seconds(self) -> int:
        return max(scope.resolve_horizon_seconds for scope in self.scopes)

    @property
    def min_interval_seconds(self) -> int:
        return min(scope.prediction_interval_seconds for scope in self.scopes)

    @property
    def higher_is_better(self) -> bool:
        return self.ranking_descending

    def scope(self, key: str) -> Scope | None:
        return next((scope for scope in self.scopes if scope.key == key), None)

    @property
    def cycles_per_hour(self) -> float:
        """Cycles an hour over every scope: one prediction per model each."""
        return sum(3600 / scope.prediction_interval_seconds for scope in self.scopes)

    def cycle_times(self, start: datetime, end: datetime) -> list[tuple[datetime, Scope]]:
        """Every (cycle time, scope) with start <= cycle time < end, in time order. Cycle times are
        multiples of the interval since the epoch, so live and backfill agree on them."""
        cycles: list[tuple[datetime, Scope]] = []
        for scope in self.scopes:
            step = scope.prediction_interval_seconds
            first = math.ceil(start.timestamp() / step) * step
            for seconds in range(first, math.ceil(end.timestamp()), step):
                cycles.append((datetime.fromtimestamp(seconds, tz=timezone.utc), scope))
        cycles.sort(key=lambda item: (item[0], item[1].key))
        return cycles
