"""A webhook receiver on loopback: records the JSON bodies POSTed to it and answers with the given
statuses in turn (then 200). Its URL holds a secret token, as real webhook URLs do."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = "tok3n-never-logged"


class Webhook:
    """A loopback HTTP server answering POSTs with the given statuses in turn (then 200)."""

    def __init__(self, statuses=(), host: str = "127.0.0.1"):
        self.statuses = list(statuses)
        self.bodies: list[dict] = []
        self.received_at: list[float] = []  # when each body arrived (unix seconds), in order
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                owner.bodies.append(json.loads(self.rfile.read(length)))
                owner.received_at.append(time.time())
                status = owner.statuses.pop(0) if owner.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.host = host
        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.server_address[1]}/hooks/{SECRET}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
