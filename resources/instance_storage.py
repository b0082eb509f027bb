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


def _url(config_value: dict) -> str:
    return resolve_database_url(config_value.get("postgres_url"))


class CrunchRunStorage(PostgresRunStorage):
    @classmethod
    def config_type(cls):
        return _CONFIG

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(_url(config_value), config_value.get("should_autocreate_tables", True), inst_data=inst_data)


class CrunchEventLogStorage(PostgresEventLogStorage):
    @classmethod
    def config_type(cls):
        return _CONFIG

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(_url(config_value), config_value.get("should_autocreate_tables", True), inst_data=inst_data)


class CrunchScheduleStorage(PostgresScheduleStorage):
    @classmethod
    def config_type(cls):
        return _CONFIG

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(_url(config_value), config_value.get("should_autocreate_tables", True), inst_data=inst_data)


class CrunchPostgresStorage(DagsterPostgresStorage):
    @classmethod
    def config_type(cls):
        return _CONFIG

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(
            postgres_url=_url(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            inst_data=inst_data,
        )

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
