"""Bounded Dagster storage, and what a competition reports about itself.

Each competition gets:
- `<slug>__purge_job` and its daily schedule `<slug>__purge_schedule` (03:30 UTC): deletes the
  finished runs of this competition older than `older_than_days` (default
  CRUNCH_<SLUG>_PURGE_AFTER_DAYS or CRUNCH_PURGE_AFTER_DAYS, else 7) with their event logs and
  compute logs, and the ticks of its sensors and schedules older than that. A run is this
  competition's when its job is one of `<slug>__*`, or it is an ad-hoc asset run (`__ASSET_JOB`:
  backfills, launches and check runs from the UI) whose assets and checks are all this
  competition's. Only Dagster's instance APIs are used; the competition store (schema `crunch`)
  is never touched.
- the run failure sensor, the lag checks and their sensor (crunch_assets/defs/housekeeping/observability.py).

Deleting a run deletes its events, materializations included: the UI then shows partitions older
than the purge age without a materialization, while the store keeps every row.
"""
# No `from __future__ import annotations`: Dagster reads the op's config annotation at definition time.


from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg

from crunch_assets.settings import CompetitionSettings
from crunch_assets.spec import CompetitionSpec
from resources import clock

ASSET_JOB_NAME = "__ASSET_JOB"
# A run that is over (Dagster's FINISHED_STATUSES, which it does not export; tests/test_dagster_internals.py
# holds the two equal).
FINISHED_RUN_STATUSES = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
DEFAULT_PURGE_AFTER_DAYS = 7
PURGE_BATCH_SIZE = 500
# One purge run deletes at most this many runs (a first purge of a long history takes a few days).
MAX_RUNS_PER_PURGE = 100_000


@dataclass(frozen=True)
class PurgeResult:
    runs_deleted: int
    compute_log_dirs_deleted: int
    instigators_purged: int
    older_than: datetime


def _belongs_to(run: dg.DagsterRun, slug: str) -> bool:
    if run.job_name.startswith(f"{slug}__"):
        return True
    if run.job_name != ASSET_JOB_NAME:
        return False
    keys = [*(run.asset_selection or ()), *(check.asset_key for check in (run.asset_check_selection or ()))]
    return bool(keys) and all(key.path[0] == slug for key in keys)


def _candidate_runs(instance: dg.DagsterInstance, slug: str, older_than: datetime, limit: int):
    """Finished runs updated before `older_than` that may be this competition's, newest first."""
    for filters in (
        dg.RunsFilter(tags={"crunch/competition": slug}, statuses=list(FINISHED_RUN_STATUSES), updated_before=older_than),
        dg.RunsFilter(job_name=ASSET_JOB_NAME, statuses=list(FINISHED_RUN_STATUSES), updated_before=older_than),
    ):
        cursor = None
        while True:
            records = instance.get_run_records(filters=filters, limit=min(PURGE_BATCH_SIZE, limit), cursor=cursor)
            if not records:
                break
            yield from records
            cursor = records[-1].dagster_run.run_id


def purge_dagster_history(
    instance: dg.DagsterInstance, slug: str, older_than: datetime, *, max_runs: int = MAX_RUNS_PER_PURGE,
    log=None,
) -> PurgeResult:
    """Delete this competition's finished runs last updated before `older_than` (their event logs
    and compute logs with them), and its sensors' and schedules' ticks before it."""
    if older_than.tzinfo is None:
        raise ValueError("older_than must be timezone-aware (UTC)")
    compute_logs = instance.compute_log_manager
    runs_deleted = log_dirs = 0
    to_delete = []
    for record in _candidate_runs(instance, slug, older_than, max_runs):
        if len(to_delete) >= max_runs:
            break
        if _belongs_to(record.dagster_run, slug):
            to_delete.append(record.dagster_run.run_id)
    for run_id in to_delete:
        try:
            compute_logs.delete_logs(prefix=[run_id])
            log_dirs += 1
        except NotImplementedError:  # a compute log manager that cannot delete keeps its logs
            pass
        instance.delete_run(run_id)
        runs_deleted += 1
    instigators = 0
    for state in instance.all_instigator_state():
        if state.name.startswith(f"{slug}__"):
            instance.purge_ticks(state.instigator_origin_id, state.selector_id, before=older_than.timestamp())
            instigators += 1
    if log is not None:
        log.info(f"{slug}: deleted {runs_deleted} run(s) last updated before {older_than.isoformat()} "
                 f"and the ticks of {instigators} sensor(s)/schedule(s) before then")
    return PurgeResult(runs_deleted, log_dirs, instigators, older_than)


class PurgeConfig(dg.Config):
    older_than_days: float
    max_runs: int = MAX_RUNS_PER_PURGE


def build_purge(spec: CompetitionSpec, *, running: bool, settings: CompetitionSettings | None = None):
    slug = spec.slug
    settings = settings or CompetitionSettings(slug)
    default_days = settings.integer("PURGE_AFTER_DAYS", DEFAULT_PURGE_AFTER_DAYS)
    if default_days < 1:
        raise ValueError(f"{settings.name('PURGE_AFTER_DAYS')}={default_days}: keep at least one day of runs")

    @dg.op(name=f"{slug}__purge_dagster_history",
           description="Delete this competition's finished runs, their event and compute logs, and its ticks, older than the age.")
    def purge_op(context: dg.OpExecutionContext, config: PurgeConfig) -> dg.Output[dict]:
        older_than = clock.now() - timedelta(days=config.older_than_days)
        result = purge_dagster_history(context.instance, slug, older_than, max_runs=config.max_runs, log=context.log)
        summary = {"runs_deleted": result.runs_deleted, "compute_log_dirs_deleted": result.compute_log_dirs_deleted,
                   "instigators_purged": result.instigators_purged, "older_than": result.older_than.isoformat()}
        return dg.Output(summary, metadata=summary)

    @dg.job(name=f"{slug}__purge_job", executor_def=dg.in_process_executor, tags={"crunch/competition": slug},
            config=dg.RunConfig(ops={f"{slug}__purge_dagster_history": PurgeConfig(older_than_days=default_days)}),
            description=f"Purge Dagster's history of {slug} older than {default_days} day(s) (never the competition store).")
    def purge_job():
        purge_op()

    schedule = dg.ScheduleDefinition(
        name=f"{slug}__purge_schedule", job=purge_job, cron_schedule="30 3 * * *", execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED,
        description=f"Daily: runs, events, compute logs and ticks of {slug} older than {default_days} day(s).",
    )
    return purge_job, schedule
