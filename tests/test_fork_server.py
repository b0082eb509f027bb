"""The fork server (resources/model_runners/fork_server.py): in a privileged sandbox every model of
a session is forked from one preloaded process, so the interpreter is one copy for all models. What
is shared must be memory only: each model still gets namespaces of its own, nothing of the fork
server (its capabilities, its control socket, the other models' directories), and a fork server
that dies is replaced without the session noticing more than a restart.

The isolation tests of test_model_sandbox.py (other models' files, processes, network, environment,
/tmp, the uid) run on the fork server too: it is the privileged sandbox's default.
"""

from __future__ import annotations

import os
import select
import shutil
import signal

import pytest

from resources.model_runners import sandbox
from resources.model_runners.base import CallStatus, MethodCall
from resources.model_runners.local_worker import SUPERVISOR_CAPABILITY_NUMBERS
from tests.test_local_model_runner import CYCLE_CALLS, INTERFACE, make_models_dir, make_runner
from tests.test_model_sandbox import probe

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def privileged():
    if os.geteuid() != 0:
        pytest.skip("the fork server runs in the privileged sandbox only (the coordinator as root)")
    try:
        sandbox.check_sandbox(sandbox.PRIVILEGED)
    except sandbox.SandboxUnavailableError as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"this host cannot make a privileged sandbox: {error}")


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return int(stat.read().rsplit(b")", 1)[1].split()[1])


def status_field(pid: int | str, name: str) -> str:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    raise KeyError(name)


def namespaces(pid: int) -> dict[str, str]:
    return {kind: os.readlink(f"/proc/{pid}/ns/{kind}") for kind in ("pid", "mnt", "net", "ipc", "uts")}


def ended_within(pidfd: int, seconds: float) -> bool:
    poller = select.poll()  # (a pidfd may be numbered past select's 1024)
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(int(seconds * 1000)))


def fork_server_pid(session, model_id: str) -> int:
    return parent_of(session._handles[model_id].init_pid())


def test_every_model_is_forked_from_one_preloaded_process_into_namespaces_of_its_own(tmp_path):
    models_dir = make_models_dir(tmp_path, "good", "echo", "hostile")
    with make_runner(models_dir).open_session(INTERFACE) as session:
        answers = session.run_cycle(CYCLE_CALLS, timeout_seconds=5.0)
        inits = {model_id: session._handles[model_id].init_pid() for model_id in ("good", "echo", "hostile")}
        server = {parent_of(pid) for pid in inits.values()}
        assert len(server) == 1  # one fork server for the session
        (server_pid,) = server
        with open(f"/proc/{server_pid}/cmdline", "rb") as cmdline:
            assert b"--fork-server" in cmdline.read()
        seen = [namespaces(pid) for pid in inits.values()] + [namespaces(server_pid)]
        for kind in ("pid", "mnt", "net", "ipc", "uts"):
            assert len({each[kind] for each in seen}) == len(seen), kind  # no two share one
    assert all(result.status is CallStatus.SUCCESS for result in answers.values()), answers


def test_a_model_keeps_no_capability_and_cannot_lift_the_mounts_that_hide_the_others(tmp_path):
    models_dir = make_models_dir(tmp_path, "hostile", "good")
    with make_runner(models_dir).open_session(INTERFACE) as session:
        identity = probe(session, "identity")
        lifted = {path: probe(session, "unmount", path) for path in (str(models_dir), "/proc", "/tmp")}
        # as root of a user namespace of its own: the mounts it inherited are locked together
        lifted_in_own_namespace = {path: probe(session, "unmount_as_root_of_a_new_user_namespace", path)
                                   for path in (str(models_dir), "/proc", "/tmp")}
        listing = probe(session, "list_dir", str(models_dir))
        supervisor = session._handles["hostile"].init_pid()
        supervisor_bounding = int(status_field(supervisor, "CapBnd"), 16)
        supervisor_effective = int(status_field(supervisor, "CapEff"), 16)
    assert {identity["caps"][name] for name in ("CapEff", "CapPrm", "CapBnd", "CapAmb")} == {"0000000000000000"}
    assert all(outcome.startswith("PermissionError") for outcome in lifted.values()), lifted
    assert all(outcome.startswith(("umount refused", "unshare refused")) for outcome in lifted_in_own_namespace.values()), \
        lifted_in_own_namespace
    assert listing == ["hostile.py"]
    # The supervisor dropped what the fork server needed to make the namespaces (CAP_SYS_ADMIN, CAP_NET_ADMIN).
    kept = sum(1 << number for number in SUPERVISOR_CAPABILITY_NUMBERS)
    assert supervisor_bounding == kept and supervisor_effective == kept


def test_a_model_has_a_terminal_namespace_of_its_own(tmp_path):
    """/dev/pts is a devpts instance per model (the fork server's /dev is shared by all): two
    models that each open a terminal both get /dev/pts/0 and see only their own."""
    models_dir = make_models_dir(tmp_path, "hostile")
    shutil.copy(models_dir / "hostile.py", models_dir / "peer.py")
    with make_runner(models_dir).open_session(INTERFACE) as session:
        opened = session.run_cycle([MethodCall("open_terminal", ())], timeout_seconds=10.0)  # (every model is called)
        listings = session.run_cycle([MethodCall("list_dir", ("/dev/pts",))], timeout_seconds=10.0)
    assert {model_id: result.output for model_id, result in opened.items()} == {"hostile": "/dev/pts/0", "peer": "/dev/pts/0"}
    assert {model_id: result.output for model_id, result in listings.items()} == {"hostile": ["0", "ptmx"], "peer": ["0", "ptmx"]}


def test_a_model_holds_no_descriptor_of_the_fork_server_or_of_another_model(tmp_path):
    models_dir = make_models_dir(tmp_path, "hostile", "good", "echo")
    with make_runner(models_dir).open_session(INTERFACE) as session:
        descriptors = probe(session, "descriptors")
    # its stdin (/dev/null), stdout/stderr, its two protocol pipes (requests in, replies out), and
    # the directory listdir has open: no socket (the fork server's control socket), no third pipe
    assert not [target for target in descriptors.values() if target.startswith("socket:")], descriptors
    assert sum(target.startswith("pipe:") for target in descriptors.values()) <= 3, descriptors
    assert len(descriptors) <= 6, descriptors


def test_a_killed_fork_server_takes_its_models_and_the_next_cycles_start_them_again(tmp_path):
    models_dir = make_models_dir(tmp_path, "good", "echo")
    with make_runner(models_dir).open_session(INTERFACE) as session:
        assert all(r.status is CallStatus.SUCCESS for r in session.run_cycle(CYCLE_CALLS, timeout_seconds=5.0).values())
        first_server = fork_server_pid(session, "good")
        old_inits = {model_id: session._handles[model_id].init_pid() for model_id in ("good", "echo")}
        server_exit = os.pidfd_open(first_server)
        os.kill(first_server, signal.SIGKILL)
        # the kernel ends everything in its PID namespace, the models' namespaces too, before it exits
        assert ended_within(server_exit, 10.0)
        os.close(server_exit)
        outcomes = [session.run_cycle(CYCLE_CALLS, timeout_seconds=5.0) for _ in range(4)]
        second_server = fork_server_pid(session, "good")
        restarts = session.restart_counts()
    # the cycle that meets the dead models fails them (their processes ended), the next ones answer
    assert outcomes[0]["good"].status is CallStatus.FAILED and "model" in outcomes[0]["good"].detail
    assert all(r.status is CallStatus.SUCCESS for r in outcomes[-1].values()), outcomes[-1]
    assert second_server != first_server and restarts == {"good": 1, "echo": 1}
    assert all(not os.path.exists(f"/proc/{pid}/ns") for pid in old_inits.values())


def test_a_host_that_cannot_give_the_fork_server_its_capabilities_is_refused_by_name(tmp_path, monkeypatch):
    """A container given CAP_SYS_ADMIN but not CAP_NET_ADMIN: the session refuses, naming the
    capabilities and the setting for a bwrap per model, which then works. (The host's refusal is
    made by a bwrap wrapper that fails when asked for CAP_NET_ADMIN, as bwrap does without it.)"""
    models_dir = make_models_dir(tmp_path, "good")
    real_bwrap = sandbox.bwrap_executable()
    wrapper = tmp_path / "bwrap"
    wrapper.write_text("#!/bin/sh\nfor argument in \"$@\"; do\n  if [ \"$argument\" = CAP_NET_ADMIN ]; then\n"
                       "    echo 'bwrap: capset failed: Operation not permitted' >&2; exit 1\n  fi\ndone\n"
                       f"exec {real_bwrap} \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setattr(sandbox, "bwrap_executable", lambda: str(wrapper))
    sandbox._probe.cache_clear()
    try:
        with pytest.raises(sandbox.SandboxUnavailableError, match=r"CAP_NET_ADMIN.*fork_server=False"):
            make_runner(models_dir).open_session(INTERFACE)
        with make_runner(models_dir, fork_server=False).open_session(INTERFACE) as session:
            result = session.run_cycle(CYCLE_CALLS, timeout_seconds=5.0)
        assert result["good"].status is CallStatus.SUCCESS, result
    finally:
        sandbox._probe.cache_clear()


def test_a_coordinator_holding_descriptors_past_1024_still_starts_ends_and_restarts_models(tmp_path):
    """1,000 models are 2,000 pipes: every descriptor the fork server's parts wait on may be
    numbered past select(2)'s 1024 (a bench at 1,000 models failed so, closing its session)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the 4096 this test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        models_dir = make_models_dir(tmp_path, "good", "echo")
        with make_runner(models_dir).open_session(INTERFACE) as session:
            first = session.run_cycle(CYCLE_CALLS, timeout_seconds=5.0)
            server = fork_server_pid(session, "good")
            server_exit = os.pidfd_open(server)
            os.kill(server, signal.SIGKILL)
            assert ended_within(server_exit, 10.0)
            os.close(server_exit)
            outcomes = [session.run_cycle(CYCLE_CALLS, timeout_seconds=5.0) for _ in range(3)]
            control_fd = session._fork_server._control.fileno()
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert control_fd > 1024  # the new fork server's socket is numbered past select's range
    assert all(r.status is CallStatus.SUCCESS for r in first.values()), first
    assert all(r.status is CallStatus.SUCCESS for r in outcomes[-1].values()), outcomes[-1]
