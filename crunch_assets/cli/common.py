"""What the commands share beyond loading competitions (crunch_assets/code_locations.py)."""

from __future__ import annotations

import contextlib
import signal


@contextlib.contextmanager
def exit_cleanly_on_sigterm():
    """uvicorn handles SIGTERM by shutting down, then raises the signal again with the handler it
    found: Python's default one would end the process without its exit handlers, and the embedded
    PostgreSQL (stopped by its last user's exit handler) would keep running. Here SIGTERM ends
    the process like Ctrl-C does (SystemExit 0), exit handlers included."""

    def exit_now(_signum, _frame):
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    except KeyboardInterrupt:  # uvicorn raises SIGINT again after its shutdown: a clean stop too
        raise SystemExit(0) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
