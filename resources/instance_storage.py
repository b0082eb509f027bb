"""Dagster instance storage on the same PostgreSQL as the competition store.

dagster.yaml names `CrunchPostgresStorage`. With no `postgres_url` in its config and no
$CRUNCH_DATABASE_URL, it starts the embedded server, so `dagster dev -w workspace.yaml` needs
nothing configured. The three sub-storages are re-created from the instance ref in other
processes (run workers, the daemon), so each resolves the URL the same way.
"""

from __future__ import annotations

from dagster import Field, StringSource
from dagster._serdes import ConfigurableClassData
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage
from dagster_postgres.storage import DagsterPostgresStorage

from resources.database_url import resolve_database_url

_CONFIG = {
    "postgres_url": Field(StringSource, is_required=False),
    "should_autocreate_tables": Field(bool, is_required=False, default_value=True),
}


class _ResolvedUrl:
    """Config without a required URL: resolved like the competition store's (explicit URL,
    $CRUNCH_DATABASE_URL, else the embedded server)."""

    @classmethod
    def config_type(cls):
        return _CONFIG

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(
            resolve_database_url(config_value.get("postgres_url")),
            config_value.get("should_autocreate_tables", True),
            inst_data=inst_data,
        )


class CrunchRunStorage(_ResolvedUrl, PostgresRunStorage):
    pass


class CrunchEventLogStorage(_ResolvedUrl, PostgresEventLogStorage):
    pass


class CrunchScheduleStorage(_ResolvedUrl, PostgresScheduleStorage):
    pass


class CrunchPostgresStorage(_ResolvedUrl, DagsterPostgresStorage):
    """The instance storage named in dagster.yaml; its three parts are re-created from the
    instance ref in other processes, so each is one of the classes above."""

    def _sub_storage_data(self, class_name: str) -> ConfigurableClassData | None:
        if not self.inst_data:
            return None
        return ConfigurableClassData(__name__, class_name, self.inst_data.config_yaml)

    @property
    def event_storage_data(self):
        return self._sub_storage_data(CrunchEventLogStorage.__name__)

    @property
    def run_storage_data(self):
        return self._sub_storage_data(CrunchRunStorage.__name__)

    @property
    def schedule_storage_data(self):
        return self._sub_storage_data(CrunchScheduleStorage.__name__)
