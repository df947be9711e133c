"""Screenshots of the admin pages for the README, from a real `strongroom serve` in headless
Chromium, with a throwaway home and made-up data.

    .venv/bin/python docs/screenshots/make_screenshots.py        # writes docs/screenshots/*.png

Needs what the browser tests need (the Debian packages chromium and chromium-driver, and
the test dependencies). Run it again after a page changes, and commit the PNGs.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from strongroom.web.auth import hash_token

HERE = Path(__file__).parent
WIDTH = 1200
#: The tallest a screenshot gets; longer pages are cut (the top says what the page is).
MAX_HEIGHT = 1400
#: What the headless window takes from its height for itself.
WINDOW_FRAME = 150
PASSCODE = "Screenshot-Passc0de"
TOKEN = secrets.token_urlsafe(16)
DR = "/admin/system/disasterrecovery"
STORE = f"{DR}/stores/backupsDefault"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="strongroom-screenshots-") as scratch:
        source = _sample_source(Path(scratch) / "srv" / "app-data")
        with _server(Path(scratch) / "home", source) as url, _browser() as browser:
            api = _Api(url)
            api.create("nightly-2026-01-31", "before the upgrade", keepDays="30")
            api.create("weekly_" + "archive_of_the_customer_database_" * 3, "", keepDays="365")
            restore = api.post(f"{STORE}/backups/nightly-2026-01-31/restore", passcode=PASSCODE)
            api.wait(restore.json()["jobsUrl"])
            _shoot_every_page(browser, url, api.create("before-migration", "manual", keepDays=""))


class _Api:
    """The admin API with the screenshot server's token."""

    def __init__(self, url: str) -> None:
        self.url = url

    def post(self, path: str, **form: str) -> httpx.Response:
        data = {"f": "json", "token": TOKEN, **form}
        response = httpx.post(self.url + path, data=data, timeout=60)
        response.raise_for_status()
        return response

    def wait(self, jobs_url: str) -> dict[str, Any]:
        while True:
            job: dict[str, Any] = httpx.get(
                jobs_url, params={"f": "json", "token": TOKEN}, timeout=60
            ).json()
            if job["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
                return job
            time.sleep(0.1)

    def create(self, name: str, description: str, **form: str) -> str:
        """Back up the server's source as `name`; the URL of the finished job."""
        submitted = self.post(
            f"{STORE}/backups/create",
            name=name,
            passcode=PASSCODE,
            description=description,
            **form,
        )
        jobs_url: str = submitted.json()["jobsUrl"]
        self.wait(jobs_url)
        return jobs_url


def _shoot_every_page(browser: WebDriver, url: str, job_url: str) -> None:
    browser.get(f"{url}{STORE}/backups")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "sign-in").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "backups"))
    _shoot(browser, "backups")
    browser.get(f"{url}{STORE}/backups/nightly-2026-01-31")
    _shoot(browser, "backup")
    contents = browser.find_element(By.ID, "contents")
    contents.find_element(By.NAME, "passcode").send_keys(PASSCODE)
    contents.find_element(By.TAG_NAME, "button").click()
    WebDriverWait(browser, 30).until(lambda d: d.title.startswith("Contents"))
    _shoot(browser, "contents")
    browser.get(f"{url}/admin/jobs")
    _shoot(browser, "jobs")
    browser.get(job_url)
    _shoot(browser, "job")
    browser.get(f"{url}{STORE}/backups/create")
    _shoot(browser, "create")
    browser.get(f"{url}{DR}/stores")
    _shoot(browser, "stores")


def _shoot(browser: WebDriver, name: str) -> None:
    """The page as one PNG, WIDTH wide and as tall as its content (up to MAX_HEIGHT)."""
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(WIDTH, min(int(height) + WINDOW_FRAME, MAX_HEIGHT))
    path = HERE / f"{name}.png"
    browser.save_screenshot(str(path))
    print(f"{path} ({path.stat().st_size // 1000} kB)")
    browser.set_window_size(WIDTH, MAX_HEIGHT)


def _sample_source(root: Path) -> Path:
    """What a small product keeps: a config, a database dump, uploads."""
    (root / "uploads" / "2026" / "01").mkdir(parents=True)
    (root / "config.yml").write_text("listen: 0.0.0.0:8443\nworkers: 4\n")
    (root / "database.dump").write_bytes(os.urandom(3_000_000) + b"\0" * 9_000_000)
    for n in range(6):
        (root / "uploads" / "2026" / "01" / f"invoice-{n:04}.pdf").write_bytes(os.urandom(150_000))
    return root


@contextmanager
def _server(home: Path, source: Path) -> Iterator[str]:
    """`strongroom serve` on a free loopback port, with only the screenshot token."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {
        **os.environ,
        "STRONGROOM_HOME": str(home),
        "STRONGROOM_API_TOKEN_HASHES": hash_token(TOKEN),
        "STRONGROOM_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    environment.pop("STRONGROOM_CONFIG", None)
    command = [sys.executable, "-m", "strongroom.cli", "serve", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--source", str(source)], env=environment, stdout=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{url}{DR}", params={"f": "json", "token": TOKEN}, timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextmanager
def _browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={WIDTH},{MAX_HEIGHT}")
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        yield driver
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
