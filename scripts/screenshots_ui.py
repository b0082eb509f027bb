"""Screenshots of the demo as a new user meets it (run by ./scripts/screenshots): the demo launcher
in a temporary data directory on free ports (its own embedded PostgreSQL, the 24 hours of history
replayed for every competition), then the Dagster UI's asset graph, the leaderboard and checkpoint
assets with their tables, and the participant page of each competition, each checked for what it
must show before it is kept. Everything the demo started is stopped at the end.

    .venv/bin/python scripts/screenshots_ui.py docs/screenshots
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
READY_TIMEOUT_SECONDS = 900
VIEWPORT = {"width": 1400, "height": 900}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, deadline: float, demo: subprocess.Popen) -> None:
    while True:  # polling for readiness with a deadline
        if demo.poll() is not None:
            raise SystemExit(f"the demo exited with {demo.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer within {READY_TIMEOUT_SECONDS} s")
        time.sleep(1)


def stop(demo: subprocess.Popen, data_dir: Path) -> None:
    """SIGINT to the launcher (it stops its servers), then whatever is left of its process group,
    then the embedded PostgreSQL it started in the data directory."""
    if demo.poll() is None:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            demo.kill()
    try:
        os.killpg(demo.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    postmaster = data_dir / "pgdata" / "postmaster.pid"
    if postmaster.exists():
        try:
            os.kill(int(postmaster.read_text().split()[0]), signal.SIGINT)  # PostgreSQL's fast shutdown
        except (ProcessLookupError, ValueError):
            pass


def shoot(out: Path, api: str, ui: str) -> list[str]:
    from playwright.sync_api import sync_playwright

    board = httpx.get(f"{api}/competitions/btc_updown/leaderboard", timeout=30).json()["entries"]
    taken = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport=VIEWPORT)

        def ui_page(path: str, name: str, must_show: list[str]) -> None:
            page.goto(ui + path, wait_until="networkidle", timeout=180_000)
            if not taken:  # the UI's newsletter prompt comes up on the first visit; skipped, it stays away
                try:
                    page.get_by_role("button", name="Skip").click(timeout=20_000)
                except Exception:  # it did not come up
                    pass
            for text in must_show:
                try:
                    page.get_by_text(text, exact=False).first.wait_for(state="attached", timeout=120_000)
                except Exception:
                    failed = Path(tempfile.gettempdir()) / f"{name}-missing.png"
                    page.screenshot(path=str(failed))
                    raise SystemExit(f"{path} does not show {text!r} (see {failed})") from None
            page.screenshot(path=str(out / f"{name}.png"))
            taken.append(name)

        ui_page("/locations/btc_updown/asset-groups/btc_updown", "ui-asset-graph-btc_updown",
                ["feed_records", "predictions", "scores", "snapshots", "leaderboard", "_checkpoints"])
        ui_page("/assets/btc_updown/leaderboard", "ui-leaderboard-btc_updown",
                ["checkpoint_period", *[e["model_id"] for e in board]])
        ui_page("/assets/btc_updown/emission_checkpoints", "ui-emission-checkpoints-btc_updown",
                ["reward_split", "merkle_root"])
        ui_page("/assets/crypto_density/leaderboard", "ui-leaderboard-crypto_density", ["checkpoint_period"])
        for path, name, must_show in (("/", "demo-page-btc_updown", ["higher is better"]),
                                      ("/page/crypto_density", "demo-page-crypto_density", ["lower is better"])):
            page.goto(api + path)
            for text in must_show:
                assert text in page.locator("#score-explained").inner_text(), (path, text)
            assert page.locator("#leaderboard tbody tr").count() == 3, path
            assert page.locator("section.checkpoint").count() == 10, path  # 24 hourly checkpoints, ten a page
            page.screenshot(path=str(out / f"{name}.png"), full_page=True)
            taken.append(name)
        browser.close()
    return taken


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else PROJECT_ROOT / "docs" / "screenshots").resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="crunch-screenshots-"))
    api_port, ui_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUNCH_") and k != "DAGSTER_HOME"}
    env.update(CRUNCH_DATA_DIR=str(data_dir), CRUNCH_API_PORT=str(api_port), CRUNCH_UI_PORT=str(ui_port))
    log = open(data_dir / "demo.log", "w")
    demo = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "scripts" / "demo_launcher.py")], cwd=PROJECT_ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        api, ui = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{ui_port}"
        wait_for(f"{ui}/server_info", deadline, demo)  # it comes up once the history is replayed
        taken = shoot(out, api, ui)
    finally:
        stop(demo, data_dir)
        log.close()
    shutil.rmtree(data_dir, ignore_errors=True)
    print("\n".join(f"{name}.png" for name in taken))
    return 0


if __name__ == "__main__":
    sys.exit(main())
