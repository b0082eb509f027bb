"""What a local model's code can reach from its sandbox: only its contract.

Issue: a model process received the coordinator's full environment (CRUNCH_API_TOKEN, the alert
webhook, the database URL of the postgres superuser) and published it as its output; it could
open the database, read the checkout and other models' files. Each test here runs the hostile
fixture model (tests/fixtures/local_models/models/hostile.py) in a real sandbox and asserts what
it gets.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from pathlib import Path

import pytest

from resources.model_runners import sandbox
from resources.model_runners.base import CallStatus, MethodCall
from resources.model_runners.local import PROJECT_ROOT
from tests.test_local_model_runner import CYCLE_CALLS, FIXTURES_DIR, INTERFACE, make_models_dir, make_runner

pytestmark = pytest.mark.integration

SECRETS = {
    "CRUNCH_API_TOKEN": "token-" + uuid.uuid4().hex,
    "CRUNCH_ALERT_WEBHOOK_URL": "https://hooks.example/" + uuid.uuid4().hex,
    "CRUNCH_DATABASE_URL": "postgresql://postgres:" + uuid.uuid4().hex + "@localhost/crunch",
    "PYTHONPATH": "/somewhere/else",
}


@pytest.fixture(params=[sandbox.PRIVILEGED, sandbox.USER_NAMESPACE])
def kind(request, monkeypatch):
    """Both kinds of sandbox. The user-namespace kind (what a non-root coordinator gets) is forced
    here, run as root: it is the same sandbox, without the switch to the model's own user."""
    if request.param == sandbox.PRIVILEGED and os.geteuid() != 0:
        pytest.skip("the privileged sandbox needs the coordinator to run as root")
    if request.param == sandbox.USER_NAMESPACE:
        monkeypatch.setattr(sandbox, "sandbox_kind", lambda: sandbox.USER_NAMESPACE)
    try:
        sandbox.check_sandbox(request.param)
    except sandbox.SandboxUnavailableError as error:
        if os.environ.get("CI"):
            raise  # CI runs as root on a machine that can sandbox: never skip there
        pytest.skip(f"this host cannot make a {request.param} sandbox: {error}")
    return request.param


def probe(session, method: str, *args, model_id: str = "hostile"):
    result = session.run_cycle([MethodCall(method, args)], timeout_seconds=10.0)[model_id]
    assert result.status is CallStatus.SUCCESS, result.detail
    return result.output


def test_the_environment_is_only_what_the_contract_passes(tmp_path, monkeypatch, kind):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    models_dir = make_models_dir(tmp_path, "hostile")
    runner = make_runner(models_dir)
    with runner.open_session(INTERFACE) as session:
        environment = probe(session, "environment")
    expected = {**sandbox.contract_environment([str(PROJECT_ROOT), str(FIXTURES_DIR / "lib")]),
                "PWD": str(models_dir.resolve())}  # its working directory, set by bwrap's --chdir
    # Python itself adds LC_CTYPE when it coerces the C locale; nothing else is there.
    assert {name: value for name, value in environment.items() if name != "LC_CTYPE"} == expected
    assert not set(SECRETS.values()) & set(environment.values())


def test_the_model_runs_as_its_own_unprivileged_user(tmp_path, kind):
    models_dir = make_models_dir(tmp_path, "hostile")
    runner = make_runner(models_dir)
    with runner.open_session(INTERFACE) as session:
        identity = probe(session, "identity")
        supervisor = probe(session, "signal_pid", 1)
        after_signal = probe(session, "processes")
    assert identity["no_new_privs"] == "1"
    no_capability = "0000000000000000"
    assert identity["caps"]["CapEff"] == identity["caps"]["CapPrm"] == identity["caps"]["CapAmb"] == no_capability
    assert identity["caps"]["CapInh"] == no_capability
    # The sandbox's PID 1 is out of its reach: another user's, or (same user) the namespace's init,
    # which the kernel does not let its namespace kill.
    assert supervisor.startswith("PermissionError") if kind == sandbox.PRIVILEGED else supervisor == "sent"
    assert after_signal == [1, 2]
    if kind == sandbox.PRIVILEGED:
        uid = sandbox.model_uid(runner.sandbox_first_uid, str(models_dir.resolve()), "hostile")
        assert uid >= runner.sandbox_first_uid > 0
        assert identity["uid"] == [uid] * 3 and identity["gid"] == [uid] * 3 and identity["groups"] == []
        assert identity["caps"]["CapBnd"] == "0000000000000000"


def test_no_network_not_even_the_hosts_loopback(tmp_path, kind):
    listener = socket.create_server(("127.0.0.1", 0))  # a service on the host's loopback, as the database would be
    abstract_listener = socket.socket(socket.AF_UNIX)
    abstract_name = "\0crunch-test-" + uuid.uuid4().hex
    abstract_listener.bind(abstract_name)
    abstract_listener.listen()
    unix_path = tmp_path / "service.sock"
    unix_listener = socket.socket(socket.AF_UNIX)
    unix_listener.bind(str(unix_path))
    unix_listener.listen()
    try:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # it does answer, here
        models_dir = make_models_dir(tmp_path, "hostile")
        with make_runner(models_dir).open_session(INTERFACE) as session:
            loopback = probe(session, "connect", "127.0.0.1", port)
            outside = probe(session, "connect", "192.0.2.1", 5432)
            abstract = probe(session, "connect_unix", abstract_name)
            unix_file = probe(session, "connect_unix", str(unix_path))
    finally:
        listener.close()
        abstract_listener.close()
        unix_listener.close()
    assert loopback.startswith("ConnectionRefusedError")  # its own, empty loopback
    assert outside.startswith("OSError: [Errno 101] Network is unreachable")
    assert abstract.startswith("ConnectionRefusedError")  # abstract sockets belong to the network namespace
    assert unix_file.startswith("FileNotFoundError")  # the socket's directory is not in the sandbox


def test_no_file_of_the_host_but_its_own_and_what_it_needs(tmp_path, kind):
    models_dir = make_models_dir(tmp_path, "hostile", "good")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "pgdata.conf").write_text("secret\n")
    with make_runner(models_dir).open_session(INTERFACE) as session:
        reads = {path: probe(session, "read", str(path)) for path in (
            models_dir / "good.py",                # another model
            data_dir / "pgdata.conf",              # the data directory
            PROJECT_ROOT / "pyproject.toml",       # the checkout
            PROJECT_ROOT / ".git" / "config",
            Path("/etc/passwd"),
            Path("/proc/1/environ"),               # the supervisor's environment
        )}
        own = probe(session, "read", str(models_dir / "hostile.py"))
        listings = {path: probe(session, "list_dir", str(path)) for path in (models_dir, PROJECT_ROOT, Path("/"))}
        writes = {path: probe(session, "write", str(path), 10) for path in (models_dir / "x.py", Path("/tmp/x"))}
    assert own.startswith('"""A model that tries')
    for path, outcome in reads.items():
        expected = "PermissionError" if str(path).startswith("/proc/") else "FileNotFoundError"
        assert outcome.startswith(expected), (path, outcome)
    assert listings[models_dir] == ["hostile.py"]
    # the worker script, the fixtures' base class (and the virtualenv, where it lives in the checkout)
    venv = {Path(sys.prefix).name} if Path(sys.prefix).parent == PROJECT_ROOT else set()
    assert set(listings[PROJECT_ROOT]) == {"resources", "tests", *venv}
    assert "work" not in listings[Path("/")] or str(PROJECT_ROOT).startswith("/work")
    # Nothing reaches the host: the directories around its binds are the sandbox's own (in the
    # user-namespace sandbox, owned by its user, so writable, in a tmpfs that ends with it).
    assert writes[models_dir / "x.py"].startswith("PermissionError") if kind == sandbox.PRIVILEGED else True
    assert not (models_dir / "x.py").exists()
    assert probe_write_own_file(models_dir, kind).startswith("OSError: [Errno 30] Read-only file system")
    assert writes[Path("/tmp/x")] == "written"  # its own, private /tmp


def probe_write_own_file(models_dir: Path, kind: str) -> str:
    with make_runner(models_dir).open_session(INTERFACE) as session:
        return probe(session, "write", str(models_dir / "hostile.py"), 10)


def test_the_tmp_of_a_model_is_bounded(tmp_path, kind):
    models_dir = make_models_dir(tmp_path, "hostile")
    with make_runner(models_dir, sandbox_tmp_mb=1).open_session(INTERFACE) as session:
        outcome = probe(session, "write", "/tmp/big", 4 * 1024 * 1024)
    assert outcome.startswith(("OSError: [Errno 27] File too large", "OSError: [Errno 28] No space left on device"))


def test_a_model_cannot_see_or_signal_the_processes_of_others(tmp_path, kind):
    models_dir = make_models_dir(tmp_path, "hostile", "good")
    with make_runner(models_dir).open_session(INTERFACE) as session:
        seen = probe(session, "processes")
        others = session.model_processes("good")
        signalled = {pid: probe(session, "signal_pid", pid) for pid in others}
        after = session.run_cycle(CYCLE_CALLS, timeout_seconds=5.0)
    assert seen == [1, 2]  # its supervisor and itself
    assert all(outcome.startswith(("ProcessLookupError", "PermissionError")) for outcome in signalled.values())
    assert after["good"].output == {"p_up": 0.7} and session.restart_counts()["good"] == 0


def test_a_host_that_cannot_sandbox_refuses_to_start_models_and_names_the_setting(tmp_path, monkeypatch):
    """Never silently unsandboxed: the runner refuses, naming the setting that runs models without
    a sandbox. (The host's failure is made here by a bwrap that cannot run.)"""
    models_dir = make_models_dir(tmp_path, "good")
    monkeypatch.setattr(sandbox, "bwrap_executable", lambda: str(tmp_path / "no-bwrap-here"))
    sandbox._probe.cache_clear()
    try:
        with pytest.raises(sandbox.SandboxUnavailableError, match="CRUNCH_MODEL_SANDBOX=off"):
            make_runner(models_dir).open_session(INTERFACE)
        with make_runner(models_dir, sandbox="off").open_session(INTERFACE) as session:  # the explicit choice
            result = session.run_cycle(CYCLE_CALLS, timeout_seconds=5.0)
        assert result["good"].output == {"p_up": 0.7}
    finally:
        sandbox._probe.cache_clear()


def test_the_sandbox_setting_is_read_by_name_and_a_wrong_value_refused(tmp_path):
    from crunch_assets.settings import CompetitionSettings, SettingsError

    assert CompetitionSettings("btc_updown", {}).model_runner(str(tmp_path)).sandbox == "on"
    unsandboxed = CompetitionSettings("btc_updown", {"CRUNCH_MODEL_SANDBOX": "off"}).model_runner(str(tmp_path))
    assert unsandboxed.sandbox == "off"
    with pytest.raises(SettingsError, match="CRUNCH_BTC_UPDOWN_MODEL_SANDBOX='of'"):
        CompetitionSettings("btc_updown", {"CRUNCH_BTC_UPDOWN_MODEL_SANDBOX": "of"}).model_runner(str(tmp_path))
