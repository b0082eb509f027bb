"""What a competition declares: its scopes, schedule, windows and ranking, checked at load time."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

SLUG_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
HOUR_SECONDS = 3600
DAY_SECONDS = 86400
WEEK_SECONDS = 7 * DAY_SECONDS


class SpecError(ValueError):
    """A competition's declaration is wrong; the message names the field."""


@dataclass(frozen=True)
class Scope:
    """One prediction config: what is predicted, how often, and when it resolves."""

    subject: str
    resolve_horizon_seconds: int
    prediction_interval_seconds: int
    step_seconds: int | None = None

    @property
    def key(self) -> str:
        return f"{self.subject}-{self.resolve_horizon_seconds}-{self.prediction_interval_seconds}"

    @property
    def effective_step_seconds(self) -> int:
        return self.step_seconds or self.resolve_horizon_seconds

    def as_dict(self) -> dict:
        return {
            "subject": self.subject,
            "resolve_horizon_seconds": self.resolve_horizon_seconds,
            "prediction_interval_seconds": self.prediction_interval_seconds,
            "step_seconds": self.effective_step_seconds,
        }


@dataclass(frozen=True)
class LeaderboardWindow:
    name: str
    seconds: int


DEFAULT_WINDOWS = (
    LeaderboardWindow("score_recent", DAY_SECONDS),
    LeaderboardWindow("score_steady", 3 * DAY_SECONDS),
    LeaderboardWindow("score_anchor", WEEK_SECONDS),
)


@dataclass(frozen=True)
class CompetitionSpec:
    slug: str
    start: datetime  # first partition; timezone-aware UTC, on an hour boundary
    scopes: tuple[Scope, ...]
    checkpoint_interval_seconds: int = WEEK_SECONDS
    leaderboard_windows: tuple[LeaderboardWindow, ...] = DEFAULT_WINDOWS
    ranking_key: str = "score_recent"
    ranking_descending: bool = True
    # What a model sees before predicting: the candles that closed in the last history_seconds.
    history_seconds: int = HOUR_SECONDS
    # Ground truth needs a price observed at most this long before the instant it prices.
    max_price_staleness_seconds: int = 120
    # Extra wait after a prediction resolves before it is scored (late feed rows).
    settle_delay_seconds: int = 0
    # Fault policy: after this many FAILED cycles in a row a model is not called for the cool-down
    # (0 disables quarantine).
    quarantine_after_failures: int = 5
    quarantine_cooldown_seconds: int = 600
    # A prediction whose ground truth is still missing this long after it resolved is VOIDED:
    # neither scored nor penalised.
    void_after_seconds: int = 3600
    # How long a live cycle waits for its feed (all subjects) before going on with stored data.
    live_feed_wait_seconds: float = 10.0
    # Feed rows older than this (by market time) are deleted once archived to Parquet.
    feed_retention_days: int = 90
    # Live feed polling between cycles (keeps ground truth fresh when cycles are sparse).
    feed_poll_interval_seconds: int = 30
    # Live catch-up bound: cycles older than this when the sensor first sees them are not run live
    # (backfill them instead).
    max_catchup_seconds: int = 15 * 60
    # The cycle sensor launches a cycle's run this long before it is due, so the run process has
    # booted by then; the run waits for the due time before it reads anything (data cutoff = T).
    cycle_lead_seconds: int = 10
    # Evaluated on every pass of Dagster's sensor daemon (it loops every ~5 s): with the lead above,
    # every cycle is launched before it is due.
    cycle_sensor_interval_seconds: int = 1
    settlement_sensor_interval_seconds: int = 10
    # Emission accounts (on-chain public keys); the crunch key defaults to the slug in the demo.
    crunch_pubkey: str = ""
    compute_provider_pubkey: str | None = None
    data_provider_pubkey: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
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
            interval = scope.prediction_interval_seconds
            if interval <= 0 or HOUR_SECONDS % interval:
                raise SpecError(f"scope {scope.key}: prediction_interval_seconds must divide 3600, got {interval}")
            if not 0 < scope.resolve_horizon_seconds <= HOUR_SECONDS:
                # Scores of an hourly window read the feed up to one window later.
                raise SpecError(f"scope {scope.key}: resolve_horizon_seconds must be in (0, 3600]")
        checkpoint_cron(self.checkpoint_interval_seconds)  # raises SpecError when unsupported
        window_names = [window.name for window in self.leaderboard_windows]
        if self.ranking_key not in window_names:
            raise SpecError(f"ranking_key {self.ranking_key!r} is not a leaderboard window; windows: {window_names}")

    @property
    def subjects(self) -> list[str]:
        return sorted({scope.subject for scope in self.scopes})

    @property
    def max_horizon_seconds(self) -> int:
        return max(scope.resolve_horizon_seconds for scope in self.scopes)

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


def checkpoint_cron(interval_seconds: int) -> str:
    """The cron schedule of checkpoint windows (they start where the previous one ended)."""
    if interval_seconds == WEEK_SECONDS:
        return "0 0 * * 1"  # Monday 00:00 UTC
    if interval_seconds == DAY_SECONDS:
        return "0 0 * * *"
    if interval_seconds % HOUR_SECONDS == 0 and DAY_SECONDS % interval_seconds == 0:
        return f"0 */{interval_seconds // HOUR_SECONDS} * * *"
    raise SpecError(
        "checkpoint_interval_seconds must be 604800 (a week), 86400 (a day) or a number of hours "
        f"dividing a day; got {interval_seconds}"
    )
