"""Debian's Chromium driven by Playwright, for page tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

from tests.personas import PASSWORD

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = (
        os.environ.get("CHROMIUM_PATH")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    if not path:
        missing = "Chromium is not installed (apt-get install chromium; `make test` does it)"
        if os.environ.get("CI"):
            pytest.fail(missing)  # CI must drive the real browser, not skip it
        pytest.skip(missing)
    return path


@contextmanager
def browser_page() -> Iterator[object]:
    """Yield a Playwright page in headless Chromium; the sync API needs Django's async guard off."""
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(15_000)
            yield page
        finally:
            # Inside the block the test runs in Playwright's greenlet, which Django takes
            # for another context with database connections of its own: close them here,
            # or the test database cannot be dropped at the end.
            connections.close_all()
            browser.close()


def screenshot(page: object, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    return path


def log_in(
    page: Any,
    base: str,
    username: str,
    *,
    password: str = PASSWORD,
    wait_for: str | None = "header nav",
) -> None:
    """Log USERNAME in through the login page; then wait for WAIT_FOR (None: do not wait,
    as after a refused password)."""
    page.goto(f"{base}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    if wait_for is not None:
        page.wait_for_selector(wait_for)
