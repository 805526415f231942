"""Real headless Chromium for the web tests: Debian's ``/usr/bin/chromium`` driven by Playwright
through ``executable_path`` (never ``playwright install``: it downloads, and fails offline).

Fixtures (registered for every test folder by tests/conftest.py):

* ``browser`` (session): one Chromium for the whole run;
* ``page``: a fresh context and page, JavaScript on; ``page_nojs``: the same with JavaScript off.

``screenshot(page, name)`` keeps a full-page PNG under ``test-artifacts/screenshots/`` (gitignored;
CI keeps the folder as the run's artifacts) and returns its path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-gpu", "--disable-quic"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PHONE = {"width": 390, "height": 844}  # a common phone screen, CSS pixels


def require_chromium() -> None:
    """Fail (never skip) when Chromium or Playwright is not installed."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing. The browser tests run Debian's chromium: ./scripts/test installs "
                    "it (scripts/setup-env.sh APT_PACKAGES); or run `apt-get install -y chromium`.", pytrace=False)
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.fail("the Python package playwright is missing: pip install -e '.[test]' "
                    "(never `playwright install`: the tests use Debian's chromium)", pytrace=False)


def screenshot(page, name: str) -> Path:
    """Save a full-page PNG of ``page`` as a test artifact; ``name`` becomes the file name."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".png")
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator:
    require_chromium()
    from playwright.sync_api import sync_playwright
    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()
    finally:
        pw.stop()


def _page(browser, **opts) -> Iterator:
    """A page in a context of its own. Whatever the page tried that the site's
    Content-Security-Policy refused (Chromium says so on the console) fails the test."""
    ctx = browser.new_context(**opts)
    ctx.set_default_timeout(30_000)
    refused: list[str] = []
    try:
        page = ctx.new_page()
        page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
        yield page
    finally:
        ctx.close()
    assert not refused, f"refused by the Content-Security-Policy: {refused}"


@pytest.fixture
def page(browser) -> Iterator:
    yield from _page(browser)


@pytest.fixture
def page_nojs(browser) -> Iterator:
    yield from _page(browser, java_script_enabled=False)
