"""What an anonymous client costs the report API: `crunch-dagster api` is started on loopback (as the
api role: on $CRUNCH_API_DATABASE_URL when the database variables are set, else on a fresh embedded
PostgreSQL) and attacked; its RSS and open file
descriptors are read with psutil all along.

1. one anonymous POST of a 200 MB body to a mutation (declared with Content-Length);
2. five at once;
3. slow-loris: --connections sockets (from 127.0.0.2) each trickling its request head a byte
   every 100 ms for --hold-seconds; a normal client asks /health every 200 ms meanwhile.

    .venv/bin/python bench/bench_api_abuse.py [--connections 2000] [--hold-seconds 15] [--body-mb 200] [--smoke] [-- extra api options]

Exits 1 when the API no longer answers /health after the attacks.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
from bench import benchkit  # noqa: E402

BODY_BYTES = 200 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Peak:
    def __init__(self, measure):
        self.measure, self.peak, self._stop = measure, measure(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.01):
            try:
                self.peak = max(self.peak, self.measure())
            except psutil.Error:
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def post_huge(port: int, body_bytes: int = BODY_BYTES) -> tuple[str, int, float]:
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"POST /reports/checkpoints/1/confirm HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {body_bytes}\r\n\r\n".encode())
    piece, sent = b"x" * 65536, 0
    sock.settimeout(120)
    try:
        while sent < body_bytes:
            sent += sock.send(piece)
    except OSError:
        pass
    try:
        answer = sock.recv(200)
    except OSError:
        answer = b""
    sock.close()
    return answer.split(b"\r\n", 1)[0].decode(errors="replace"), sent, time.monotonic() - started


def _still_open(sock: socket.socket) -> bool:
    try:
        while sock.recv(65536):
            pass
        return False  # the server closed it
    except BlockingIOError:
        return True
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--hold-seconds", type=float, default=15.0)
    parser.add_argument("--body-mb", type=int, default=BODY_BYTES // 2**20, help="the huge POST's declared body (MiB)")
    parser.add_argument("api_options", nargs="*", help="more `crunch-dagster api` options (after --)")
    benchkit.add_smoke_argument(parser)
    args = parser.parse_args()
    if args.smoke:
        args.connections, args.hold_seconds, args.body_mb = 50, 2.0, 20
    benchkit.smoke_banner(args)

    from resources.database_url import uses_embedded_server

    if not uses_embedded_server():  # an external server: the API reads its own variable, or refuses naming it
        return attack(args)
    with benchkit.embedded_server("crunch-bench-abuse-"):  # the API finds its role's login under CRUNCH_DATA_DIR
        return attack(args)


def attack(args) -> int:
    body_bytes = args.body_mb * 2**20
    benchkit.conditions(f"report API under abuse: {args.body_mb} MiB bodies, {args.connections} slow-loris sockets")
    port = _free_port()
    command = [str(Path(sys.executable).with_name("crunch-dagster")), "api", "--port", str(port), "--log-level",
               "error", *args.api_options]
    api = subprocess.Popen(command, env={**os.environ, "CRUNCH_API_TOKEN": "bench-token"})
    process = psutil.Process(api.pid)
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline or api.poll() is not None:
                raise SystemExit("the API did not start") from None
            time.sleep(0.2)

    def rss_mb() -> float:
        return process.memory_info().rss / 2**20

    try:
        print(f"API pid {api.pid}: RSS {rss_mb():.0f} MB, {process.num_fds()} fds; {' '.join(command[1:])}")
        before = rss_mb()
        with Peak(rss_mb) as peak:
            status, sent, seconds = post_huge(port, body_bytes)
        benchkit.figure(f"1 x {args.body_mb} MiB POST: {status!r} after {sent / 2**20:.1f} MB sent, {seconds:.2f} s; "
                        f"RSS {before:.0f} -> peak {peak.peak:.0f} -> {rss_mb():.0f} MB")
        before = rss_mb()
        results: list = []
        with Peak(rss_mb) as peak:
            threads = [threading.Thread(target=lambda: results.append(post_huge(port, body_bytes))) for _ in range(5)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        benchkit.figure(f"5 x {args.body_mb} MiB POST at once: {sorted({r[0] for r in results})}, {sum(r[1] for r in results) / 2**20:.1f} MB "
                        f"sent; RSS {before:.0f} -> peak {peak.peak:.0f} -> {rss_mb():.0f} MB")

        fds_before = process.num_fds()
        sockets, refused_connect = [], 0
        for _ in range(args.connections):
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.settimeout(5)
            try:
                sock.connect(("127.0.0.1", port))
                sock.setblocking(False)
                sockets.append(sock)
            except OSError:
                refused_connect += 1
                sock.close()
        payload = b"GET /health HTTP/1.1\r\nHost: api\r\nX-Slow: " + b"a" * 10000
        latencies, failures = [], 0
        with Peak(process.num_fds) as fds:
            started = time.monotonic()
            position = 0
            while time.monotonic() - started < args.hold_seconds:
                for sock in sockets:
                    try:
                        sock.send(payload[position:position + 1])
                    except OSError:
                        pass
                position += 1
                asked = time.monotonic()
                try:
                    httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).raise_for_status()
                    latencies.append(time.monotonic() - asked)
                except httpx.HTTPError:
                    failures += 1
                time.sleep(0.1)
            still_open = sum(1 for sock in sockets if _still_open(sock))
        for sock in sockets:
            sock.close()
        latencies.sort()
        median = f"{latencies[len(latencies) // 2] * 1000:.0f} ms" if latencies else "-"
        benchkit.figure(f"slow-loris {len(sockets)} sockets ({refused_connect} could not connect) for {args.hold_seconds:.0f} s: "
                        f"server fds {fds_before} -> peak {fds.peak}; still open at the end: {still_open}; "
                        f"normal client: {len(latencies)} answered (median {median}), {failures} failed")
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).raise_for_status()
        except httpx.HTTPError as error:
            print(f"FAILED: the API no longer answers /health after the attacks: {error}")
            return 1
        return 0
    finally:
        api.terminate()
        api.wait(timeout=30)


if __name__ == "__main__":
    raise SystemExit(main())
