"""What a competition tells its operators, inside Dagster.

- `<slug>__run_failure_sensor` (Dagster's run_failure_sensor, over this code location's jobs):
  logs each failed run in the sensor's tick, records an AssetObservation on the assets the run was
  materializing (metadata: run id, job, partition, error), and POSTs a JSON alert to
  $CRUNCH_ALERT_WEBHOOK_URL when it is set (at most WEBHOOK_ATTEMPTS attempts, each bounded by
  WEBHOOK_TIMEOUT_SECONDS; the URL is a secret and never logged).
- Lag, as asset checks on `predictions` (`cycles_on_time`: the last stored cycle), `scores`
  (`scores_on_time`: the last scored cycle) and `emission_checkpoints` (`checkpoints_on_time`: the
  last checkpoint's end), judged on the store against bounds from the spec and recorded without a
  run by `<slug>__lag_sensor`; the report API's `/lag` serves the same figures.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import dagster as dg
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from crunch_assets.keys import ChainKeys
from crunch_assets.spec import CompetitionSpec
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
        name=f"{slug}__run_failure_sensor", minimum_interval_seconds=120,  # a tick costs CPU and a stored row
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
        url = os.environ.get(ALERT_WEBHOOK_ENV)
        if not url:
            return
        try:
            status = post_alert(url, payload)
        except requests.RequestException as exc:
            context.log.warning(f"alert webhook {redacted(url)} unreachable after {WEBHOOK_ATTEMPTS} attempt(s): "
                                f"{type(exc).__name__}")
            return
        if status >= 300:
            context.log.warning(f"alert webhook {redacted(url)} answered {status} after up to {WEBHOOK_ATTEMPTS} attempt(s)")
        else:
            context.log.info(f"alerted {redacted(url)} ({status})")

    return run_failure_sensor


LAG_CHECKS = {  # asset -> the check that says whether its newest stored row is recent enough
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
    least 3 minutes) for the last stored cycle; the longest horizon, the settle delay and 10 minutes
    for the last scored cycle; a checkpoint period plus that and 2 hours for the last checkpoint's end."""
    horizon = timedelta(seconds=spec.max_horizon_seconds + spec.settle_delay_seconds)
    return {
        "predictions": max(timedelta(seconds=2 * spec.min_interval_seconds), timedelta(minutes=3)),
        "scores": horizon + timedelta(minutes=10),
        "emission_checkpoints": timedelta(seconds=spec.checkpoint_interval_seconds) + horizon + timedelta(hours=2),
    }


@dataclass(frozen=True)
class LagVerdict:
    asset: str
    check_name: str
    passed: bool
    last_at: datetime | None  # the newest stored cycle, scored cycle or checkpoint end
    behind_seconds: float | None
    bound_seconds: float
    due_since: datetime  # before this nothing can be late (the competition has just started)

    @property
    def description(self) -> str:
        if self.last_at is None:
            state = "nothing stored yet"
        else:
            state = f"newest {self.last_at.isoformat()}, {self.behind_seconds:.0f} s behind"
        return f"{self.asset}: {state} (bound {self.bound_seconds:.0f} s)" + ("" if self.passed else ": LATE")

    def metadata(self) -> dict:
        return {
            "last_at": dg.MetadataValue.text(self.last_at.isoformat() if self.last_at else "none"),
            "behind_seconds": dg.MetadataValue.float(float(self.behind_seconds if self.behind_seconds is not None else -1)),
            "bound_seconds": dg.MetadataValue.float(float(self.bound_seconds)),
            "due_since": dg.MetadataValue.text(self.due_since.isoformat()),
        }


def lag_verdicts(spec: CompetitionSpec, lag: LagReport, now: datetime) -> list[LagVerdict]:
    """Whether each stage's newest stored row is recent enough (pure: the store's lag figures in,
    verdicts out). The last stored cycle is the laggiest scope's."""
    bounds = lag_bounds(spec)
    cycles = list(lag.last_cycle_by_scope.values())
    last = {
        "predictions": None if not cycles or any(c is None for c in cycles) else min(cycles),
        "scores": lag.last_scored_cycle,
        "emission_checkpoints": lag.last_checkpoint_end,
    }
    first_due = {
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
        verdicts.append(LagVerdict(asset, check_name, passed, at, behind, bound.total_seconds(), due_since))
    return verdicts


def current_lag(spec: CompetitionSpec, database: CrunchDatabase, now: datetime) -> list[LagVerdict]:
    return lag_verdicts(spec, ReportStore(database.engine, spec.slug).lag([s.key for s in spec.scopes]), now)


def build_lag_checks(spec: CompetitionSpec, keys: ChainKeys) -> list[dg.AssetChecksDefinition]:
    """One check per stage, judged on the store (a live run records its materializations at the end
    of its hour, so Dagster's own last-update time says nothing about lag). The lag sensor reports
    their evaluations without a run; launching one from the UI judges the same way."""

    def build(asset: str, check_name: str) -> dg.AssetChecksDefinition:
        @dg.asset_check(asset=getattr(keys, asset), name=check_name,
                        description=f"The newest stored {asset} row is at most {lag_bounds(spec)[asset]} behind now.")
        def lag_check(database: CrunchDatabase) -> dg.AssetCheckResult:
            verdict = next(v for v in current_lag(spec, database, datetime.now(timezone.utc)) if v.check_name == check_name)
            return dg.AssetCheckResult(passed=verdict.passed, metadata=verdict.metadata(),
                                       severity=dg.AssetCheckSeverity.WARN, description=verdict.description)

        return lag_check

    return [build(asset, name) for asset, name in LAG_CHECKS.items()]


def build_lag_sensor(spec: CompetitionSpec, keys: ChainKeys, *, running: bool) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{spec.slug}__lag_sensor", minimum_interval_seconds=spec.lag_sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED,
        description="Judges the lag checks on the store and records their evaluations (no run): at once when a "
                    f"verdict changes, otherwise every {LAG_REPORT_EVERY_SECONDS} s.",
    )
    def lag_sensor(context: dg.SensorEvaluationContext, database: CrunchDatabase):
        now = datetime.now(timezone.utc)
        reported = json.loads(context.cursor) if context.cursor else {}
        verdicts = current_lag(spec, database, now)
        for verdict in verdicts:
            previous = reported.get(verdict.check_name)
            if previous and previous["passed"] == verdict.passed and now.timestamp() - previous["at"] < LAG_REPORT_EVERY_SECONDS:
                continue
            context.instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                asset_key=getattr(keys, verdict.asset), check_name=verdict.check_name, passed=verdict.passed,
                metadata=verdict.metadata(), severity=dg.AssetCheckSeverity.WARN, description=verdict.description,
            ))
            reported[verdict.check_name] = {"passed": verdict.passed, "at": now.timestamp()}
        context.update_cursor(json.dumps(reported, sort_keys=True))
        return dg.SkipReason(", ".join(  # short: the tick is stored; the check evaluations carry the details
            f"{v.asset} " + ("none yet" if v.behind_seconds is None else f"{v.behind_seconds:.0f}/{v.bound_seconds:.0f} s")
            + ("" if v.passed else " LATE") for v in verdicts))

    return lag_sensor


def build_observability(spec: CompetitionSpec, keys: ChainKeys, *, running: bool):
    return [build_run_failure_sensor(spec, running=running), build_lag_sensor(spec, keys, running=running)], \
        build_lag_checks(spec, keys)
