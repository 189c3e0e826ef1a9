"""The system Chromium, driven through Playwright, for the tests that look at pages as a person does
(tests/test_dashboard.py, tests/test_graphiql.py), and where their screenshots go.

Playwright drives Debian's /usr/bin/chromium; it never downloads a browser of its own (`make test` and
.ci/run install the package through tests/ensure-chromium.sh when it is missing).
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


class Chromium:
    """The system Chromium, launched on first use: a missing browser fails the test itself, with what to do."""

    def __init__(self) -> None:
        self._playwright = None
        self._browser = None

    def browser(self):
        if self._browser is None:
            if not CHROMIUM.exists():
                pytest.fail(
                    f"{CHROMIUM} is missing: the browser tests drive the system Chromium. Install it with "
                    "`apt-get install -y chromium` (`make test` does so through tests/ensure-chromium.sh).",
                    pytrace=False,
                )
            from playwright.sync_api import sync_playwright

            self._playwright = sync_playwright().start()
            self._browser = self._playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        return self._browser

    def close(self) -> None:
        if self._browser is not None:
            self._browser.close()
        if self._playwright is not None:
            self._playwright.stop()


def screenshot(page, name: str) -> Path:
    """The whole page as tests/artifacts/NAME (the folder is ignored by git)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"\nscreenshot: {path}")
    return path
