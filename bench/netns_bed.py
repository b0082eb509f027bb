"""Hosts on one machine: each a Linux network namespace with its own address, its own PID namespace
and its own supervisor, joined by one bridge; faults between them with iptables.

Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN), iproute2 (`ip`), util-linux (`unshare`) and iptables
(Debian `iptables`; .ci/run installs it). Nothing here touches the machine's own network: the bridge
lives in a namespace of its own (the "switch"), every address is one the bed assigns to its own
namespaces' interfaces, and no namespace has a route anywhere else. Host names resolve through
/etc/netns/<namespace>/hosts, which `ip netns exec` mounts over /etc/hosts inside the namespace, so
the deployment's own host names (`postgres`, `code_btc_updown`, ...) work unchanged.

- `Bed.create()` makes the namespaces; `Bed.destroy()` kills what runs in them and removes them
  (also those a crashed earlier bed of a dead process left behind).
- `Bed.start_host(name, programs, env)`: supervisord as PID 1 of a new PID namespace inside the
  host's network namespace, running `programs` (restarted whenever they exit, as a container
  platform's restart policy does). `Bed.kill_host(name)` SIGKILLs that PID 1: the kernel kills
  every process of the host at once, as when a machine is lost.
- `Bed.cut(a, b)` drops every packet between two hosts (iptables in a's namespace, both
  directions), `Bed.degrade(a, b, delay_ms, loss_percent)` delays each packet between them by
  `delay_ms` (NFQUEUE, held by a small process in a's namespace: this kernel has no netem) and drops
  `loss_percent` of them at random (the statistic match), in each direction.
- `in_namespace(bed.netns(name))` runs a block of the calling thread inside a host's network
  namespace (sockets created there stay there): the harness's probes and fakes use it.

    python bench/netns_bed.py delay --queue 7 --delay-ms 200   # the packet holder (run by degrade)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

NAMESPACE_PREFIX = "crunchbed"
NETNS_ETC = Path("/etc/netns")
CLONE_NEWNET = 0x40000000
IPTABLES_COMMENT = "crunchbed-fault"
SUPERVISORD = Path(sys.executable).with_name("supervisord")


class BedError(RuntimeError):
    pass


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise BedError(f"{shlex.join(command)} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    return result


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run a bed (empty: it can)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    for tool in ("ip", "unshare", "iptables"):
        if shutil.which(tool) is None:
            missing.append(tool)
    if not SUPERVISORD.exists():
        missing.append(str(SUPERVISORD))
    if not missing:
        probe = f"{NAMESPACE_PREFIX}-probe-{os.getpid()}"
        try:
            run("ip", "netns", "add", probe)
            run("ip", "netns", "exec", probe, "iptables", "-S")
        except BedError as error:
            missing.append(f"network namespaces with iptables ({error})")
        finally:
            run("ip", "netns", "del", probe, check=False)
    return missing


@contextlib.contextmanager
def in_namespace(netns: str):
    """Run the block with the calling thread in network namespace `netns` (then back): the sockets
    it creates belong to that namespace for good."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net", "rb") as original, open(f"/run/netns/{netns}", "rb") as target:
        if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise BedError(f"setns({netns}): {os.strerror(ctypes.get_errno())}")
        try:
            yield
        finally:
            if libc.setns(original.fileno(), CLONE_NEWNET) != 0:
                raise BedError(f"setns back from {netns}: {os.strerror(ctypes.get_errno())}")


@dataclass
class Program:
    """One supervised program of a host."""

    command: list[str]
    directory: Path | None = None
    user: str | None = None
    stop_wait_seconds: int = 20


@dataclass
class Host:
    name: str
    address: str
    aliases: tuple[str, ...]  # the host names it answers to (the deployment's service names)
    netns: str
    init: subprocess.Popen | None = None  # `unshare` holding the host's PID namespace
    programs: dict[str, Program] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Degradation:
    host: str
    peer: str
    holder: subprocess.Popen
    rules: list[list[str]]


class Bed:
    """Hosts on a /24 inside one switch namespace. `hosts`: name -> (last octet, aliases)."""

    def __init__(self, root: Path, hosts: dict[str, tuple[int, tuple[str, ...]]], subnet: str = "10.231.0"):
        self.root = root
        self.tag = f"{NAMESPACE_PREFIX}-{os.getpid()}"
        self.switch = f"{self.tag}-switch"
        self.subnet = subnet
        self.hosts = {name: Host(name, f"{subnet}.{octet}", aliases, f"{self.tag}-{name}")
                      for name, (octet, aliases) in hosts.items()}
        self.cuts: dict[tuple[str, str], list[list[str]]] = {}
        self.degradations: dict[tuple[str, str], Degradation] = {}
        self.created = False

    # ---- topology -------------------------------------------------------------------------------

    def netns(self, host: str) -> str:
        return self.hosts[host].netns

    def address(self, host: str) -> str:
        return self.hosts[host].address

    def create(self) -> None:
        remove_orphaned_beds()
        self.root.mkdir(parents=True, exist_ok=True)
        self.created = True
        run("ip", "netns", "add", self.switch)
        run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.switch, "link", "set", "br0", "up")
        hosts_file = "127.0.0.1 localhost\n" + "".join(
            f"{host.address} {' '.join(host.aliases)}\n" for host in self.hosts.values() if host.aliases)
        for index, host in enumerate(self.hosts.values()):
            run("ip", "netns", "add", host.netns)
            port = f"port{index}"
            run("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
            run("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
            run("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            run("ip", "-n", host.netns, "link", "set", "eth0", "up")
            run("ip", "-n", host.netns, "link", "set", "lo", "up")
            etc = NETNS_ETC / host.netns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts_file)
            (etc / "resolv.conf").write_text("# no DNS inside the bed: names come from hosts\n")

    def destroy(self) -> None:
        for pair in list(self.degradations):
            self.restore_quality(*pair)
        for host in self.hosts.values():
            self.kill_host(host.name, wait_seconds=10)
        remove_bed(self.tag)
        self.created = False

    # ---- processes ------------------------------------------------------------------------------

    def exec_prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns(host)]

    def start_host(self, name: str, programs: dict[str, Program] | None = None, env: dict[str, str] | None = None) -> None:
        """Boot the host: supervisord as PID 1 of its own PID namespace runs `programs` (the last ones
        given, when it is started again after a kill)."""
        host = self.hosts[name]
        if programs is not None:
            host.programs = programs
        if env is not None:
            host.env = env
        directory = self.root / name
        (directory / "logs").mkdir(parents=True, exist_ok=True)
        conf = directory / "supervisord.conf"
        conf.write_text(supervisord_conf(directory, host.programs))
        host.init = subprocess.Popen(
            [*self.exec_prefix(name), "unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
             str(SUPERVISORD), "-n", "-c", str(conf)],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **host.env},
            stdout=open(directory / "logs" / "supervisord.out", "ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill_host(self, name: str, wait_seconds: float = 30) -> list[int]:
        """SIGKILL every process of the host (its PID namespace's init, then anything left in its
        network namespace); returns the pids that were running."""
        host = self.hosts[name]
        pids = self.host_pids(name)
        if host.init is not None and host.init.poll() is None:
            for child in _children(host.init.pid):
                os.kill(child, signal.SIGKILL)  # PID 1 of the namespace: the kernel kills the rest
            host.init.kill()
        if host.init is not None:
            host.init.wait()
        deadline = time.monotonic() + wait_seconds
        while (left := self.host_pids(name)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        return pids

    def host_pids(self, name: str) -> list[int]:
        result = run("ip", "netns", "pids", self.netns(name), check=False)
        return [int(pid) for pid in result.stdout.split()]

    def host_running(self, name: str) -> bool:
        init = self.hosts[name].init
        return init is not None and init.poll() is None

    def supervisor_status(self, name: str) -> dict[str, str]:
        """program -> state, from the host's supervisord (through its socket: no network involved)."""
        conf = self.root / name / "supervisord.conf"
        result = subprocess.run([str(SUPERVISORD.with_name("supervisorctl")), "-c", str(conf), "status"],
                                capture_output=True, text=True, timeout=30)
        return {parts[0]: parts[1] for parts in (line.split() for line in result.stdout.splitlines()) if len(parts) >= 2}

    # ---- faults ---------------------------------------------------------------------------------

    def _iptables(self, host: str, *rule: str) -> None:
        run(*self.exec_prefix(host), "iptables", "-w", *rule)

    def cut(self, host: str, peer: str) -> None:
        """Drop every packet between host and peer (in host's namespace, both directions): what a
        firewall or a dead link does. Established connections hang; new ones time out."""
        peer_address = self.address(peer)
        rules = [["INPUT", "-s", peer_address, "-j", "DROP"], ["OUTPUT", "-d", peer_address, "-j", "DROP"]]
        for rule in rules:
            self._iptables(host, "-I", rule[0], "1", *rule[1:], "-m", "comment", "--comment", IPTABLES_COMMENT)
        self.cuts[(host, peer)] = rules

    def restore(self, host: str, peer: str) -> None:
        for rule in self.cuts.pop((host, peer), []):
            self._iptables(host, "-D", rule[0], *rule[1:], "-m", "comment", "--comment", IPTABLES_COMMENT)

    def degrade(self, host: str, peer: str, delay_ms: int, loss_percent: float, queue: int = 7) -> None:
        """Every packet between host and peer, each way, dropped with probability loss_percent / 100,
        else held delay_ms before it goes on (a packet holder on NFQUEUE `queue` in host's namespace)."""
        peer_address = self.address(peer)
        directory = self.root / "faults"
        directory.mkdir(parents=True, exist_ok=True)
        holder = subprocess.Popen(
            [*self.exec_prefix(host), sys.executable, str(Path(__file__).resolve()), "delay",
             "--queue", str(queue), "--delay-ms", str(delay_ms)],
            stdout=open(directory / f"delay-{host}-{peer}.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        _wait_for_queue(holder, queue)
        probability = f"{loss_percent / 100:.4f}"
        rules = []
        for chain, direction in (("OUTPUT", "-d"), ("INPUT", "-s")):
            rules.append([chain, direction, peer_address, "-m", "statistic", "--mode", "random", "--probability",
                          probability, "-j", "DROP"])
            rules.append([chain, direction, peer_address, "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"])
        for rule in rules:
            self._iptables(host, "-A", rule[0], *rule[1:], "-m", "comment", "--comment", IPTABLES_COMMENT)
        self.degradations[(host, peer)] = Degradation(host, peer, holder, rules)

    def restore_quality(self, host: str, peer: str) -> None:
        degradation = self.degradations.pop((host, peer), None)
        if degradation is None:
            return
        for rule in degradation.rules:
            self._iptables(host, "-D", rule[0], *rule[1:], "-m", "comment", "--comment", IPTABLES_COMMENT)
        degradation.holder.terminate()  # with the rules gone, nothing more is queued; what is held is released
        try:
            degradation.holder.wait(10)
        except subprocess.TimeoutExpired:
            degradation.holder.kill()
            degradation.holder.wait()


def _wait_for_queue(holder: subprocess.Popen, queue: int, timeout_seconds: float = 30) -> None:
    """Until the holder has bound its queue (it prints a line), so no packet is let through unheld."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if holder.poll() is not None:
            raise BedError(f"the packet holder exited ({holder.returncode})")
        if _holder_bound(holder.pid, queue):
            return
        time.sleep(0.1)
    raise BedError(f"the packet holder did not bind queue {queue} within {timeout_seconds:.0f} s")


def _holder_bound(pid: int, queue: int) -> bool:
    """/proc/net/netfilter/nfnetlink_queue of the holder's namespace lists queue `queue` once bound."""
    try:
        text = Path(f"/proc/{pid}/net/netfilter/nfnetlink_queue").read_text()
    except OSError:
        return False
    return any(line.split() and line.split()[0] == str(queue) for line in text.splitlines())


def _children(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children.extend(int(child) for child in (task / "children").read_text().split())
    return children


def supervisord_conf(directory: Path, programs: dict[str, Program]) -> str:
    lines = [
        "[supervisord]", "nodaemon=true", f"logfile={directory / 'logs' / 'supervisord.log'}",
        f"pidfile={directory / 'supervisord.pid'}", f"childlogdir={directory / 'logs'}", "",
        "[unix_http_server]", f"file={directory / 'supervisor.sock'}", "chmod=0700", "",
        "[rpcinterface:supervisor]", "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{directory / 'supervisor.sock'}", "",
    ]
    for name, program in programs.items():
        lines += [
            f"[program:{name}]",
            f"command={shlex.join(program.command).replace('%', '%%')}",
            f"directory={program.directory or directory}",
            "autostart=true", "autorestart=true", "startsecs=1", "startretries=100000",
            "stopsignal=TERM", f"stopwaitsecs={program.stop_wait_seconds}", "stopasgroup=true", "killasgroup=true",
            "redirect_stderr=true", f"stdout_logfile={directory / 'logs' / f'{name}.log'}",
            "stdout_logfile_maxbytes=50MB", "stdout_logfile_backups=1",
        ]
        if program.user:
            lines.append(f"user={program.user}")
        lines.append("")
    return "\n".join(lines)


def bed_namespaces(tag: str) -> list[str]:
    result = run("ip", "netns", "list", check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.split() and line.split()[0].startswith(f"{tag}-")]


def remove_bed(tag: str) -> None:
    """Kill every process in the bed's namespaces, delete them and their /etc/netns files."""
    for netns in bed_namespaces(tag):
        for _ in range(50):
            pids = [int(pid) for pid in run("ip", "netns", "pids", netns, check=False).stdout.split()]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        run("ip", "netns", "del", netns, check=False)
        shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)


def remove_orphaned_beds() -> None:
    """Beds whose creating process is gone (a harness killed before its clean-up)."""
    result = run("ip", "netns", "list", check=False)
    tags = {"-".join(name.split("-")[:2]) for name in (line.split()[0] for line in result.stdout.splitlines() if line.split())
            if name.startswith(f"{NAMESPACE_PREFIX}-")}
    for tag in tags:
        owner = tag.split("-")[1]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            remove_bed(tag)


# ---- the packet holder ---------------------------------------------------------------------------

def hold_packets(queue: int, delay_ms: int) -> None:
    """Accept each packet of NFQUEUE `queue` delay_ms after it arrived, in arrival order (fnfqueue:
    the kernel's nfqueue netlink interface, no libnetfilter_queue needed)."""
    import collections
    import threading

    import fnfqueue

    connection = fnfqueue.Connection()
    bound = connection.bind(queue)
    bound.set_mode(0, fnfqueue.COPY_META)  # only the verdict is needed, not the payload
    held: collections.deque = collections.deque()
    ready = threading.Condition()
    delay_seconds = delay_ms / 1000

    def release() -> None:
        while True:
            with ready:
                while not held:
                    ready.wait()
                due, packet = held[0]
                wait = due - time.monotonic()
                if wait > 0:
                    ready.wait(wait)
                    continue
                held.popleft()
            packet.accept()

    threading.Thread(target=release, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: connection.close())
    print(f"holding the packets of queue {queue} for {delay_ms} ms", flush=True)
    with contextlib.suppress(fnfqueue.BufferOverflowException, OSError):
        for packet in connection:
            with ready:
                held.append((time.monotonic() + delay_seconds, packet))
                ready.notify()
    # released on the way out: the rules are gone, nothing is left waiting for a verdict
    while held:
        held.popleft()[1].accept()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    delay = commands.add_parser("delay", help="hold each packet of an NFQUEUE queue, then accept it")
    delay.add_argument("--queue", type=int, required=True)
    delay.add_argument("--delay-ms", type=int, required=True)
    arguments = parser.parse_args()
    if arguments.command == "delay":
        hold_packets(arguments.queue, arguments.delay_ms)


if __name__ == "__main__":
    main()
