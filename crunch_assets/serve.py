"""The supervised single-machine deployment: what `crunch-dagster serve` writes and runs.

supervisord (from PyPI) runs each part as its own process, restarts any that dies, starts them
in order (priority) and keeps their logs, rotated, under the data directory:

| program | command | priority |
|---|---|---|
| `db` | `crunch-dagster db`: starts the embedded PostgreSQL and holds it (not with an external database) | 10 |
| `code_<location>` | `dagster api grpc` of each code location in workspace.yaml, on loopback: one process, so a kill or a stop reaches it (`dagster code-server start` would leave its gRPC child behind, holding the database) | 20 |
| `webserver` | `dagster-webserver` on the generated grpc_server workspace (the operators' UI) | 30 |
| `webserver_read_only` | `dagster-webserver --read-only` (the viewers' UI) | 30 |
| `daemon` | `dagster-daemon run` (sensors, schedules, run monitoring, run retries) | 30 |
| `api` | the report API, `crunch-dagster api --workspace <the served workspace>` (unless `--api-port 0`) | 40 |

Everything generated lives in `<data dir>/serve/`: `supervisord.conf`, `workspace.yaml` (one
`grpc_server` entry per code location) and `dagster_home/dagster.yaml` (a copy of the instance
config). The programs share supervisord's environment, plus DAGSTER_HOME and CRUNCH_DATA_DIR, so
secrets stay in environment variables and never appear in the generated files.

`crunch-dagster serve` itself stays the parent of supervisord: SIGTERM or SIGINT to it is a planned
stop (crunch_assets/cli/serve.py, crunch_assets/cli/lifetime.py).
"""

from __future__ import annotations

import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from crunch_assets.code_locations import CodeLocation, ServeConfigError, read_code_locations
from resources.database_url import PROJECT_ROOT, uses_embedded_server

SERVE_DIR = "serve"
LOGS_DIR = "logs"
LOG_MAX_BYTES = "20MB"
LOG_BACKUPS = 3


@dataclass(frozen=True)
class ServeOptions:
    data_dir: Path
    workspace: Path = PROJECT_ROOT / "workspace.yaml"
    instance_config: Path = PROJECT_ROOT / "dagster.yaml"
    host: str = "127.0.0.1"
    webserver_port: int = 3000
    read_only_port: int | None = 3001
    code_server_base_port: int = 4000
    api_port: int | None = 8000
    api_command: str | None = None  # default: `crunch-dagster api` (default_api_command)
    embedded_database: bool = True
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)

    @property
    def serve_dir(self) -> Path:
        return self.data_dir / SERVE_DIR

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / LOGS_DIR

    @property
    def dagster_home(self) -> Path:
        return self.serve_dir / "dagster_home"

    @property
    def workspace_file(self) -> Path:
        return self.serve_dir / "workspace.yaml"

    @property
    def supervisord_conf(self) -> Path:
        return self.serve_dir / "supervisord.conf"

    @property
    def supervisor_socket(self) -> Path:
        return self.serve_dir / "supervisor.sock"


def grpc_workspace(locations: list[CodeLocation], options: ServeOptions) -> dict:
    return {"load_from": [
        {"grpc_server": {"host": options.host, "port": options.code_server_base_port + index, "location_name": location.name}}
        for index, location in enumerate(locations)
    ]}


def default_api_command() -> str:
    return "{bin}/crunch-dagster api --host {host} --port {port} --workspace {workspace}"


def programs(locations: list[CodeLocation], options: ServeOptions) -> dict[str, dict]:
    """supervisord [program:x] sections, by name."""
    bin_dir = options.bin_dir
    workspace = str(options.workspace_file)
    found: dict[str, dict] = {}
    if options.embedded_database:
        found["db"] = {"command": [str(bin_dir / "crunch-dagster"), "db"], "priority": 10,
                       "stopwaitsecs": 60, "startsecs": 2}
    for index, location in enumerate(locations):
        found[f"code_{location.name}"] = {
            "command": [str(bin_dir / "dagster"), "api", "grpc", *location.target_args(),
                        "--location-name", location.name, "-h", options.host,
                        "-p", str(options.code_server_base_port + index)],
            "priority": 20,
            "directory": location.working_directory or str(PROJECT_ROOT),
            # anything the server started stops with it
            "stopasgroup": "true", "killasgroup": "true", "stopwaitsecs": 30,
        }
    webserver = [str(bin_dir / "dagster-webserver"), "-w", workspace, "-h", options.host]
    found["webserver"] = {"command": [*webserver, "-p", str(options.webserver_port)], "priority": 30}
    if options.read_only_port is not None:
        found["webserver_read_only"] = {"command": [*webserver, "-p", str(options.read_only_port), "--read-only"],
                                        "priority": 30}
    found["daemon"] = {"command": [str(bin_dir / "dagster-daemon"), "run", "-w", workspace], "priority": 30,
                       "stopasgroup": "true", "killasgroup": "true", "stopwaitsecs": 30}
    api_command = options.api_command if options.api_command is not None else default_api_command()
    if api_command and options.api_port is not None:
        # {workspace}: the served workspace's own file, so that the API reads the specs the code locations run
        line = api_command.format(bin=bin_dir, host=options.host, port=options.api_port,
                                  workspace=shlex.quote(str(options.workspace)))
        found["api"] = {"command": shlex.split(line), "priority": 40}
    return found


def supervisord_conf(locations: list[CodeLocation], options: ServeOptions) -> str:
    env = {"DAGSTER_HOME": str(options.dagster_home), "CRUNCH_DATA_DIR": str(options.data_dir), "PYTHONUNBUFFERED": "1"}
    environment = ",".join(f'{key}="{value}"' for key, value in env.items())
    lines = [
        "; Written by `crunch-dagster serve`; regenerated at every start.",
        "[supervisord]",
        "nodaemon=true",
        f"logfile={options.logs_dir / 'supervisord.log'}",
        f"logfile_maxbytes={LOG_MAX_BYTES}",
        f"logfile_backups={LOG_BACKUPS}",
        f"pidfile={options.serve_dir / 'supervisord.pid'}",
        f"childlogdir={options.logs_dir}",
        f"directory={PROJECT_ROOT}",
        f"environment={environment}",
        "",
        "[unix_http_server]",
        f"file={options.supervisor_socket}",
        "chmod=0700",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{options.supervisor_socket}",
        "",
    ]
    for name, program in programs(locations, options).items():
        settings = {
            "command": shlex.join(program["command"]),
            "priority": program["priority"],
            "directory": program.get("directory", str(PROJECT_ROOT)),
            "autostart": "true",
            "autorestart": "true",
            # a program that dies while starting is retried (1 s, 2 s, ... apart), however often
            "startsecs": program.get("startsecs", 5),
            "startretries": 1000,
            "stopsignal": "TERM",
            "stopwaitsecs": program.get("stopwaitsecs", 20),
            "stopasgroup": program.get("stopasgroup", "false"),
            "killasgroup": program.get("killasgroup", "false"),
            "redirect_stderr": "true",
            "stdout_logfile": str(options.logs_dir / f"{name}.log"),
            "stdout_logfile_maxbytes": LOG_MAX_BYTES,
            "stdout_logfile_backups": LOG_BACKUPS,
        }
        lines.append(f"[program:{name}]")
        lines.extend(f"{key}={str(value).replace('%', '%%')}" for key, value in settings.items())
        lines.append("")
    return "\n".join(lines)


def write_serve_files(options: ServeOptions) -> list[CodeLocation]:
    """Write supervisord.conf, the grpc_server workspace and the instance's dagster.yaml."""
    locations = read_code_locations(options.workspace)
    if not options.instance_config.is_file():
        raise ServeConfigError(f"no instance config at {options.instance_config}")
    for directory in (options.serve_dir, options.logs_dir, options.dagster_home):
        directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(options.instance_config, options.dagster_home / "dagster.yaml")
    options.workspace_file.write_text(
        "# Written by `crunch-dagster serve`: each code location runs as its own code server.\n"
        + yaml.safe_dump(grpc_workspace(locations, options), sort_keys=False)
    )
    options.supervisord_conf.write_text(supervisord_conf(locations, options))
    return locations


def embedded_database_wanted(environ) -> bool:
    return uses_embedded_server(environ)
