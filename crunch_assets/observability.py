"""What a competition tells its operators, inside Dagster.

- `<slug>__run_failure_sensor` (Dagster's run_failure_sensor, over this code location's jobs):
  logs each failed run in the sensor's tick, records an AssetObservation on the assets the run was
  materializing (metadata: run id, job, partition, error), and POSTs a JSON alert to
  $CRUNCH_ALERT_WEBHOOK_URL when it is set (at most WEBHOOK_ATTEMPTS attempts, each bounded by
  WEBHOOK_TIMEOUT_SECONDS; the URL is a secret and never logged).
- Lag, as Dagster freshness checks on `predictions`, `scores` and `emission_checkpoints` (the
  last materialization of any partition must be recent; the check's metadata shows when it was
  and how overdue it is), evaluated by `<slug>__freshness_checks_sensor`.
"""

from __future__ import annotations

import os
from datetime import timedelta
from urllib.parse import urlsplit

import dagster as dg
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from crunch_assets.keys import ChainKeys
from crunch_assets.spec import CompetitionSpec

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
        name=f"{slug}__run_failure_sensor", minimum_interval_seconds=15,
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


def freshness_bounds(spec: CompetitionSpec) -> dict[str, timedelta]:
    """How old the last materialization may be before the asset is overdue: two cycles (and at
    least 3 minutes) for predictions; the longest horizon, the settle delay and 10 minutes for
    scores; a checkpoint period plus that and 2 hours for checkpoints."""
    horizon = timedelta(seconds=spec.max_horizon_seconds + spec.settle_delay_seconds)
    return {
        "predictions": max(timedelta(seconds=2 * spec.min_interval_seconds), timedelta(minutes=3)),
        "scores": horizon + timedelta(minutes=10),
        "emission_checkpoints": timedelta(seconds=spec.checkpoint_interval_seconds) + horizon + timedelta(hours=2),
    }


def build_freshness(spec: CompetitionSpec, keys: ChainKeys, *, running: bool):
    checks = []
    for name, bound in freshness_bounds(spec).items():
        checks.extend(dg.build_last_update_freshness_checks(assets=[getattr(keys, name)], lower_bound_delta=bound))
    sensor = dg.build_sensor_for_freshness_checks(
        freshness_checks=checks, name=f"{spec.slug}__freshness_checks_sensor", minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED,
    )
    return checks, sensor


def build_observability(spec: CompetitionSpec, keys: ChainKeys, *, running: bool):
    checks, freshness_sensor = build_freshness(spec, keys, running=running)
    return [build_run_failure_sensor(spec, running=running), freshness_sensor], checks
