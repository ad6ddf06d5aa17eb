"""Real-browser test support: the system Chromium (no downloads) and a real uvicorn server in a thread.

Import the fixtures into a test module (`from browser_fixtures import browser_type_launch_args`);
pytest-playwright then launches /usr/bin/chromium headless. Without Chromium the tests are skipped,
unless AZAGUARD_REQUIRE_BROWSER=1 (CI), which turns a missing browser into a failure.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("AZAGUARD_REQUIRE_BROWSER") == "1":
        pytest.fail(f"a browser is required (AZAGUARD_REQUIRE_BROWSER=1) but {CHROMIUM} is missing")
    pytest.skip(f"{CHROMIUM} is not installed")


@pytest.fixture(scope="session")
def browser_type_launch_args() -> dict[str, Any]:
    """Overrides pytest-playwright's fixture: the Debian Chromium, never a downloaded one."""
    require_chromium()
    return {"executable_path": str(CHROMIUM), "headless": True, "args": LAUNCH_ARGS}


@contextmanager
def live_server(app: Any, timeout: float = 15.0) -> Iterator[str]:
    """Serve `app` with uvicorn on a free local port in a background thread; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def screenshot_path(name: str) -> Path:
    """test-artifacts/screenshots/<name>.png (git-ignored); the folder is created."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{name}.png"


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page PNG to test-artifacts/screenshots/<name>.png."""
    path = screenshot_path(name)
    page.screenshot(path=str(path), full_page=True)
    return path


def login(page: Any, username: str, password: str, base: str = "") -> None:
    """Sign in through the login form, as a person does (`base`: when the page has no base_url)."""
    page.goto(f"{base}/login")
    page.fill("#username", username)
    page.fill("#password", password)
    with page.expect_navigation():
        page.click("#login")


@contextmanager
def demo_clinic_server(
    sqlite_template: Path, folder: Path, patients: int, clinic_name: str
) -> Iterator[tuple[str, Any]]:
    """The synthetic demo clinic (`patients` patients) on its own SQLite file, copied from the
    migrated template, behind a live server: yields (base URL, Database)."""
    import shutil

    from azaguard.app import Settings, create_app
    from azaguard.store.db import Database
    from azaguard.synth import build_demo

    path = folder / "clinic.db"
    shutil.copy(sqlite_template, path)
    db = Database(f"sqlite:///{path}", create=False)
    build_demo(db, patients)
    try:
        with live_server(create_app(db, settings=Settings(clinic_name=clinic_name))) as url:
            yield url, db
    finally:
        db.engine.dispose()
