"""The default run launcher, plus a health check of the run worker for Dagster's run monitoring.

Dagster's DefaultRunLauncher starts each run in a process of the code server and cannot tell
whether that process is still alive, so run monitoring cannot see a run whose worker was killed
(SIGKILL, OOM, the code server dying with it): the run stays STARTED until `max_runtime_seconds`.
On one machine the worker's pid is known (the "Started process for run (pid: N)" engine event
Dagster writes), so this launcher reports a worker that is gone as FAILED; run monitoring then
marks the run failed within `poll_interval_seconds` and run retries relaunch it. Use it only
where the daemon sees the code servers' processes (one machine); a container launcher checks
its containers instead (deploy/).
"""

from __future__ import annotations

import dagster as dg
import psutil
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus

# A process created this long after Dagster recorded its pid is another process (the pid was reused).
PID_REUSE_SLACK_SECONDS = 5.0


class CrunchRunLauncher(dg.DefaultRunLauncher):
    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        started = self._worker_start(run.run_id)
        if started is None:  # no pid recorded yet: nothing to judge by, the runtime bound still applies
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no worker pid recorded yet")
        pid, recorded_at = started
        try:
            process = psutil.Process(pid)
            alive = process.status() != psutil.STATUS_ZOMBIE and process.create_time() <= recorded_at + PID_REUSE_SLACK_SECONDS
        except psutil.NoSuchProcess:
            alive = False
        if alive:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.FAILED, f"the run worker (pid {pid}) is gone")

    def _worker_start(self, run_id: str) -> tuple[int, float] | None:
        records = self._instance.event_log_storage.get_logs_for_run(
            run_id, of_type={dg.DagsterEventType.ENGINE_EVENT}, ascending=False,
        )
        for entry in records:
            event = entry.dagster_event
            if event is None or not (entry.user_message or "").startswith(("Started process for run", "Started process for resuming")):
                continue
            pid = event.engine_event_data.metadata.get("pid") if event.engine_event_data else None
            if pid is not None:
                try:
                    return int(pid.value), entry.timestamp
                except (TypeError, ValueError):
                    return None
        return None
