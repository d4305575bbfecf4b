"""Headless Chromium for the dashboard's browser tests, driven by Playwright.

Debian's chromium (``apt-get install chromium``, or ``NAS_CHROMIUM``) is launched once per module;
each test gets a fresh context and tab whose console errors are recorded, since a page must log
no error a test step did not provoke.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("NAS_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
# the browser logs every 4xx answer as a console error; a step that provokes one says so
EXPECTED_STATUS = re.compile(r"Failed to load resource: the server responded with a status of (401|409|413|422)")


def _chromium() -> str:
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).is_file():
        message = f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (or set NAS_CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return CHROMIUM


@dataclass
class Console:
    """Console errors and uncaught exceptions, and which of them a step provoked on purpose."""

    errors: list[str] = field(default_factory=list)
    allowed: bool = False

    def record(self, text: str) -> None:
        if not (self.allowed and EXPECTED_STATUS.search(text)):
            self.errors.append(text)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[tuple[Any, Console]]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    console = Console()
    tab.on("console", lambda message: console.record(message.text) if message.type == "error" else None)
    tab.on("pageerror", lambda error: console.errors.append(f"uncaught: {error}"))
    yield tab, console
    context.close()


@pytest.fixture
def sign_in(page: tuple[Any, Console]) -> Callable[[str, str], None]:
    """Sign the test's tab in at ``url`` with ``key``, through the sign-in form."""
    tab, _ = page

    def sign_in(url: str, key: str) -> None:
        tab.goto(url)
        tab.wait_for_url(re.compile(r"#/signin$"))
        tab.fill("#api-key", key)
        tab.click("button[type=submit]")
        tab.wait_for_selector("#jobs-table")

    return sign_in
