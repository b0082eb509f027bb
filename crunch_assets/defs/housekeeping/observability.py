"""What a competition tells its operators, inside Dagster.

- `<slug>__run_failure_sensor` (Dagster's run_failure_sensor, over this code location's jobs):
  logs each failed run in the sensor's tick, records an AssetObservation on the assets the run was
  materializing (metadata: run id, job, partition, error), and POSTs a JSON alert to
  $CRUNCH_ALERT_WEBHOOK_URL when it is set (at most WEBHOOK_ATTEMPTS attempts, each bounded by
  WEBHOOK_TIMEOUT_SECONDS; the URL is a secret and never logged).
- Lag, as asset checks on `feed_records` (`feed_on_time`: how far the feed is fetched, with the
  stream's last fetch error and open defect episode), `predictions` (`cycles_on_time`: the last
  stored cycle), `scores` (`scores_on_time`: the last scored cycle) and `emission_checkpoints`
  (`checkpoints_on_time`: the last checkpoint's end), judged on the store against bounds from the
  spec and recorded without a run by `<slug>__lag_sensor`; the report API's `/lag` serves the
  stored figures. A check that turns late POSTs the same alert as a failed run (event "lag"), once
  per outage, and once more when it is on time again (event "lag_recovered"); an alert that could
  not be delivered is tried again at the next tick.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import dagster as dg
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from crunch_assets.defs.feed.assets import feed_streams
from crunch_assets.keys import ChainKeys
from crunch_assets.spec import CompetitionSpec
from resources import clock
from resources.feeds.base import FeedResource
from resources.store.database import CrunchDatabase
from resources.store.reports import LagReport, ReportStore

ALERT_WEBHOOK_ENV = "CRUNCH_ALERT_WEBHOOK_URL"
WEBHOOK_ATTEMPTS = 3
WEBHOOK_TIMEOUT_SECONDS = 5.0
WEBHOOK_BACKOFF_SECONDS = 0.5
ERROR_CHARS = 2000


def redacted(url: str) -> str:
    """scheme://host of a URL: enough to tell which endpoint, none of its path, query or credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


def post_alert(url: str, payload: dict, *, attempts: int = WEBHOOK_ATTEMPTS,
               timeout_seconds: float = WEBHOOK_TIMEOUT_SECONDS, backoff_seconds: float = WEBHOOK_BACKOFF_SECONDS) -> int:
    """POST `payload` as JSON; connection errors, 429 and 5xx answers are retried (urllib3's Retry,
    exponential backoff) up to `attempts` in all. Returns the final status code; raises
    requests.RequestException when no answer came."""
    retry = Retry(total=attempts - 1, connect=attempts - 1, read=attempts - 1, status=attempts - 1,
                  backoff_factor=backoff_seconds, status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=frozenset({"POST"}), raise_on_status=False, respect_retry_after_header=False)
    with requests.Session() as session:
        session.mount("http://", HTTPAdapter(max_retries=retry))
        session.mount("https://", HTTPAdapter(max_retries=retry))
        response = session.post(url, json=payload, timeout=timeout_seconds)
        return response.status_code


ALERT_SENT, ALERT_FAILED, ALERT_UNSET = "sent", "failed", "unset"


def send_alert(log, payload: dict) -> str:
    """POST `payload` to $CRUNCH_ALERT_WEBHOOK_URL (if set), logging the outcome without the URL.
    Returns ALERT_SENT, ALERT_FAILED (unreachable or non-2xx after the attempts) or ALERT_UNSET."""
    url = os.environ.get(ALERT_WEBHOOK_ENV)
    if not url:
        return ALERT_UNSET
    try:
        status = post_alert(url, payload)
    except requests.RequestException as exc:
        log.warning(f"alert webhook {redacted(url)} unreachable after {WEBHOOK_ATTEMPTS} attempt(s): {type(exc).__name__}")
        return ALERT_FAILED
    if status >= 300:
        log.warning(f"alert webhook {redacted(url)} answered {status} after up to {WEBHOOK_ATTEMPTS} attempt(s)")
        return ALERT_FAILED
    log.info(f"alerted {redacted(url)} ({status}): {payload.get('event')}")
    return ALERT_SENT


def failure_payload(slug: str, run: dg.DagsterRun, error: str | None) -> dict:
    return {
        "competition": slug,
        "event": "run_failure",
        "run_id": run.run_id,
        "job": run.job_name,
        "partition": run.tags.get("dagster/partition"),
        "tags": {k: v for k, v in run.tags.items() if k.startswith("crunch/")},
        "error": (error or "")[:ERROR_CHARS],
    }


def _assets_of(instance: dg.DagsterInstance, run: dg.DagsterRun) -> set[dg.AssetKey]:
    """The assets a run set out to materialize (its selection, or its planned materializations)."""
    keys = set(run.asset_selection or ())
    planned = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED).records
    keys.update(r.event_log_entry.dagster_event.asset_key for r in planned if r.event_log_entry.dagster_event)
    return {key for key in keys if key is not None}


def build_run_failure_sensor(spec: CompetitionSpec, *, running: bool) -> dg.SensorDefinition:
    slug = spec.slug

    @dg.run_failure_sensor(
        name=f"{slug}__run_failure_sensor", minimum_interval_seconds=spec.run_failure_sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED,
        description=f"Records each failed run of {slug} (log, AssetObservation) and alerts ${ALERT_WEBHOOK_ENV} if set.",
    )
    def run_failure_sensor(context: dg.RunFailureSensorContext):
        run = context.dagster_run
        error = context.failure_event.message or ""
        for step_failure in context.get_step_failure_events():  # the run's message names the steps only
            step_error = getattr(step_failure.event_specific_data, "error", None)
            while step_error is not None and step_error.cause is not None:  # Dagster wraps the user's error
                step_error = step_error.cause
            if step_error is not None:
                error += f"\n{step_failure.step_key}: {step_error.message.strip()}"
        payload = failure_payload(slug, run, error)
        context.log.error(f"run {run.run_id} of {run.job_name} failed"
                          + (f" (partition {payload['partition']})" if payload["partition"] else "") + f": {payload['error'][:500]}")
        for key in sorted(_assets_of(context.instance, run), key=lambda k: k.to_user_string()):
            context.instance.report_runless_asset_event(dg.AssetObservation(
                asset_key=key, partition=payload["partition"],
                metadata={"failed_run_id": run.run_id, "job": run.job_name, "error": dg.MetadataValue.text(payload["error"])},
            ))
        send_alert(context.log, payload)

    return run_failure_sensor


LAG_CHECKS = {  # asset -> the check that says whether its newest stored row is recent enough
    "feed_records": "feed_on_time",
    "predictions": "cycles_on_time",
    "scores": "scores_on_time",
    "emission_checkpoints": "checkpoints_on_time",
}
# An unchanged verdict is reported again this often (the UI shows when it was last judged); a
# changed one at once (at the sensor's next tick, every spec.lag_sensor_interval_seconds). Every
# report is two rows (~2.5 KB) in Dagster's storage.
LAG_REPORT_EVERY_SECONDS = 3600


def lag_bounds(spec: CompetitionSpec) -> dict[str, timedelta]:
    """How far the newest stored row may be behind now before the asset is late: two cycles (and at
    least 3 minutes) for how far the feed is fetched and for the last stored cycle; the longest
    horizon, the settle delay and 10 minutes for the last scored cycle; a checkpoint period plus
    that and 2 hours for the last checkpoint's end."""
    horizon = timedelta(seconds=spec.max_horizon_seconds + spec.settle_delay_seconds)
    cycles = max(timedelta(seconds=2 * spec.min_interval_seconds), timedelta(minutes=3))
    return {
        "feed_records": cycles,
        "predictions": cycles,
        "scores": horizon + timedelta(minutes=10),
        "emission_checkpoints": timedelta(seconds=spec.checkpoint_interval_seconds) + horizon + timedelta(hours=2),
    }


@dataclass(frozen=True)
class LagVerdict:
    asset: str
    check_name: str
    passed: bool
    last_at: datetime | None  # how far the feed is fetched, the newest stored cycle, scored cycle or checkpoint end
    behind_seconds: float | None
    bound_seconds: float
    due_since: datetime  # before this nothing can be late (the competition has just started)
    detail: str = ""  # why, when known (the feed's last error, an open defect episode)

    @property
    def description(self) -> str:
        if self.last_at is None:
            state = "nothing stored yet"
        else:
            state = f"newest {self.last_at.isoformat()}, {self.behind_seconds:.0f} s behind"
        return (f"{self.asset}: {state} (bound {self.bound_seconds:.0f} s)" + ("" if self.passed else ": LATE")
                + (f"; {self.detail}" if self.detail else ""))

    def metadata(self) -> dict:
        return {
            "last_at": dg.MetadataValue.text(self.last_at.isoformat() if self.last_at else "none"),
            "behind_seconds": dg.MetadataValue.float(float(self.behind_seconds if self.behind_seconds is not None else -1)),
            "bound_seconds": dg.MetadataValue.float(float(self.bound_seconds)),
            "due_since": dg.MetadataValue.text(self.due_since.isoformat()),
            "detail": dg.MetadataValue.text(self.detail),
        }


@dataclass(frozen=True)
class FeedLag:
    """How far every stream of the competition's feed is fetched (None: a stream never was), and
    what is known of why a stream is behind."""

    fetched_until: datetime | None
    detail: str = ""


def lag_verdicts(spec: CompetitionSpec, lag: LagReport, now: datetime, feed: FeedLag) -> list[LagVerdict]:
    """Whether each stage's newest stored row is recent enough (pure: the store's lag figures in,
    verdicts out). The last stored cycle is the laggiest scope's, the feed the laggiest stream's."""
    bounds = lag_bounds(spec)
    cycles = list(lag.last_cycle_by_scope.values())
    last = {
        "feed_records": feed.fetched_until,
        "predictions": None if not cycles or any(c is None for c in cycles) else min(cycles),
        "scores": lag.last_scored_cycle,
        "emission_checkpoints": lag.last_checkpoint_end,
    }
    first_due = {
        "feed_records": spec.start,
        "predictions": spec.start,
        "scores": spec.start + timedelta(seconds=spec.max_horizon_seconds + spec.settle_delay_seconds),
        "emission_checkpoints": spec.start + timedelta(seconds=spec.checkpoint_interval_seconds),
    }
    verdicts = []
    for asset, check_name in LAG_CHECKS.items():
        bound, at = bounds[asset], last[asset]
        due_since = first_due[asset] + bound
        behind = None if at is None else (now - at).total_seconds()
        passed = now < due_since or (behind is not None and behind <= bound.total_seconds())
        detail = feed.detail if asset == "feed_records" and not passed else ""
        verdicts.append(LagVerdict(asset, check_name, passed, at, behind, bound.total_seconds(), due_since, detail))
    return verdicts


def feed_lag(spec: CompetitionSpec, feed: FeedResource, database: CrunchDatabase) -> FeedLag:
    """The laggiest stream's fetched span end, and each stream's last error and open defect episode."""
    health = database.feeds().stream_health(feed_streams(spec, feed))
    ends = [h.fetched_until for h in health.values()]
    notes = []
    for stream, h in health.items():
        if h.last_error:
            notes.append(f"{stream.source} {stream.subject}: last fetch error at "
                         f"{h.last_error_at.isoformat() if h.last_error_at else '?'}: {h.last_error}")
        if h.defect:
            notes.append(f"{stream.source} {stream.subject}: {h.defect.fetches} defective fetch(es) since "
                         f"{h.defect.first_seen.isoformat()}: {h.defect.detail}")
    fetched_until = None if not ends or any(end is None for end in ends) else min(ends)
    return FeedLag(fetched_until, "; ".join(notes)[:ERROR_CHARS])


def current_lag(spec: CompetitionSpec, database: CrunchDatabase, now: datetime, feed: FeedResource) -> list[LagVerdict]:
    lag = ReportStore(database.engine, spec.slug).lag([s.key for s in spec.scopes])
    return lag_verdicts(spec, lag, now, feed_lag(spec, feed, database))


def lag_payload(slug: str, verdict: LagVerdict) -> dict:
    """The alert of a lag check that turned late (event "lag") or on time again ("lag_recovered"):
    the fields of a run failure's alert, and the verdict's figures."""
    return {
        "competition": slug,
        "event": "lag_recovered" if verdict.passed else "lag",
        "run_id": None,
        "job": None,
        "partition": None,
        "tags": {},
        "error": verdict.description[:ERROR_CHARS],
        "check": verdict.check_name,
        "asset": verdict.asset,
        "last_at": verdict.last_at.isoformat() if verdict.last_at else None,
        "behind_seconds": verdict.behind_seconds,
        "bound_seconds": verdict.bound_seconds,
    }


def build_lag_checks(spec: CompetitionSpec, keys: ChainKeys) -> list[dg.AssetChecksDefinition]:
    """One check per stage, judged on the store (a live run records its materializations at the end
    of its hour, so Dagster's own last-update time says nothing about lag). The lag sensor reports
    their evaluations without a run; launching one from the UI judges the same way."""

    def build(asset: str, check_name: str) -> dg.AssetChecksDefinition:
        @dg.asset_check(asset=getattr(keys, asset), name=check_name,
                        description=f"The newest stored {asset} row is at most {lag_bounds(spec)[asset]} behind now.")
        def lag_check(database: CrunchDatabase, feed: FeedResource) -> dg.AssetCheckResult:
            verdict = next(v for v in current_lag(spec, database, clock.now(), feed)
                           if v.check_name == check_name)
            return dg.AssetCheckResult(passed=verdict.passed, metadata=verdict.metadata(),
                                       severity=dg.AssetCheckSeverity.WARN, description=verdict.description)

        return lag_check

    return [build(asset, name) for asset, name in LAG_CHECKS.items()]


def build_lag_sensor(spec: CompetitionSpec, keys: ChainKeys, *, running: bool) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{spec.slug}__lag_sensor", minimum_interval_seconds=spec.lag_sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED,
        description="Judges the lag checks on the store and records their evaluations (no run): at once when a "
                    f"verdict changes, otherwise every {LAG_REPORT_EVERY_SECONDS} s. A check that turns late "
                    f"alerts ${ALERT_WEBHOOK_ENV} once, and once more when it recovers.",
    )
    def lag_sensor(context: dg.SensorEvaluationContext, database: CrunchDatabase, feed: FeedResource):
        now = clock.now()
        reported = json.loads(context.cursor) if context.cursor else {}
        verdicts = current_lag(spec, database, now, feed)
        webhook_failed = False  # one undelivered alert per tick: the others wait for the next tick, not its timeouts
        for verdict in verdicts:
            previous = reported.get(verdict.check_name) or {}
            # What the webhook was last told (an on-time start is not news): a verdict that differs
            # is alerted, once; an alert not delivered is tried again at the next tick.
            alerted_passed = previous.get("alerted_passed", True)
            if verdict.passed != alerted_passed and not webhook_failed:
                outcome = send_alert(context.log, lag_payload(spec.slug, verdict))
                webhook_failed = outcome == ALERT_FAILED
                if not webhook_failed:
                    alerted_passed = verdict.passed
            entry = {"passed": previous.get("passed"), "at": previous.get("at", 0), "alerted_passed": alerted_passed}
            if entry["passed"] != verdict.passed or now.timestamp() - entry["at"] >= LAG_REPORT_EVERY_SECONDS:
                context.instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                    asset_key=getattr(keys, verdict.asset), check_name=verdict.check_name, passed=verdict.passed,
                    metadata=verdict.metadata(), severity=dg.AssetCheckSeverity.WARN, description=verdict.description,
                ))
                entry.update(passed=verdict.passed, at=now.timestamp())
            reported[verdict.check_name] = entry
        context.update_cursor(json.dumps(reported, sort_keys=True))
        return dg.SkipReason(", ".join(  # short: the tick is stored; the check evaluations carry the details
            f"{v.asset} " + ("none yet" if v.behind_seconds is None else f"{v.behind_seconds:.0f}/{v.bound_seconds:.0f} s")
            + ("" if v.passed else " LATE") for v in verdicts))

    return lag_sensor


def build_observability(spec: CompetitionSpec, keys: ChainKeys, *, running: bool):
    return [build_run_failure_sensor(spec, running=running), build_lag_sensor(spec, keys, running=running)], \
        build_lag_checks(spec, keys)
