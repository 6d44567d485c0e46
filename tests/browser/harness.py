"""A real browser for tests: the system's Chromium (Debian's `chromium` and `chromium-driver`, installed by
.ci/run), driven through its chromedriver with Selenium. Nothing is downloaded at run time.

`Browser` is one headless Chromium with a fresh profile; it records every URL the pages request (Chrome's
performance log), so a test can say "this page loaded nothing from outside the host", and saves a
screenshot of each page it checks under var/browser/ (to look at what a user sees).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.harness import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = REPO / "var" / "browser"
# No first-run UI, no background traffic of the browser's own (updates, sync, safe browsing lists): the
# only requests are the pages'.
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--window-size=1280,900",
]


def missing() -> str | None:
    """What is missing to run a browser here, or None."""
    absent = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if absent:
        return f"{', '.join(absent)} not found: apt-get install chromium chromium-driver (.ci/run does it)"
    return None


class Browser:
    """One headless Chromium with a fresh user-data dir; `quit()` ends it and removes the profile."""

    def __init__(self, *, wait_sec: float = 20.0):
        self.profile = Path(tempfile.mkdtemp(prefix="librarian-chromium-"))
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in [*FLAGS, f"--user-data-dir={self.profile}"]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        self.wait_sec = wait_sec
        self._requests: dict[str, str] = {}
        self._blocked: set[str] = set()

    def open(self, url: str) -> None:
        self.collect_requests()
        self._requests.clear()
        self._blocked.clear()
        self.driver.get_log("browser")  # errors of earlier pages are not this page's
        self.driver.get(url)

    def wait_for(self, css: str, *, timeout: float | None = None, visible: bool = True):
        """The first element matching `css` once it is there (and visible); fails with a screenshot."""
        condition = EC.visibility_of_element_located if visible else EC.presence_of_element_located
        try:
            return WebDriverWait(self.driver, timeout or self.wait_sec).until(
                condition((By.CSS_SELECTOR, css))
            )
        except TimeoutException:
            shot = self.screenshot("timeout")
            raise AssertionError(
                f"{css!r} did not appear on {self.driver.current_url} (see {shot})"
            ) from None

    def click(self, css: str) -> None:
        """Scroll the element into the middle of the window (clear of sticky bars), then click it."""
        element = self.wait_for(css)
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        element.click()

    def find_all(self, css: str) -> list:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def collect_requests(self) -> list[str]:
        """Every URL the pages asked for since the last `open` (documents, scripts, styles, fonts, XHR,
        images), except requests the browser refused to send (the page's Content-Security-Policy)."""
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if message.get("method") == "Network.requestWillBeSent":
                self._requests[params["requestId"]] = params["request"]["url"]
            elif message.get("method") == "Network.loadingFailed" and params.get("blockedReason"):
                self._blocked.add(params["requestId"])
        return [url for rid, url in self._requests.items() if rid not in self._blocked]

    def outside_requests(self, base_url: str) -> list[str]:
        """Requested URLs that leave `base_url`'s host (data: and blob: URLs stay in the page)."""
        host = urlsplit(base_url).hostname
        return [
            url
            for url in self.collect_requests()
            if urlsplit(url).scheme in ("http", "https", "ws", "wss") and urlsplit(url).hostname != host
        ]

    def console_errors(self) -> list[str]:
        """The messages the pages logged at SEVERE level (uncaught errors, console.error, failed loads)
        since the last `open`."""
        return [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]

    def settle(self, seconds: float = 0.5) -> None:
        """Let late requests (fonts, lazy scripts) start before checking what was requested."""
        time.sleep(seconds)

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)
