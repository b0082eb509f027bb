"""Compute logs (each step's stdout and stderr) under the data directory, not the checkout.

dagster.yaml names `CrunchComputeLogManager`. Without a `base_dir` it writes to
`$CRUNCH_DATA_DIR/compute_logs` (default `.crunch/compute_logs` in the checkout), resolved in every
process that re-creates it from the instance ref, like the database URL. The purge job
(crunch_assets/defs/housekeeping/purge.py) deletes a run's logs with the run.
"""

from __future__ import annotations

from dagster import Field, Float, StringSource
from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager

from resources.database_url import default_data_dir

COMPUTE_LOGS_DIR = "compute_logs"


class CrunchComputeLogManager(LocalComputeLogManager):
    @classmethod
    def config_type(cls):
        return {
            "base_dir": Field(StringSource, is_required=False),
            "polling_timeout": Field(Float, is_required=False),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        config = dict(config_value)
        base_dir = config.pop("base_dir", None) or str(default_data_dir() / COMPUTE_LOGS_DIR)
        return cls(base_dir=base_dir, inst_data=inst_data, **config)
