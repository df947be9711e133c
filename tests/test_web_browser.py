"""The admin pages in a real headless Chromium against a real `strongroom serve`:
sign in, create a backup through the form, watch its job end, find it in the list.

Needs the Debian packages `chromium` and `chromium-driver` (`make test` installs them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from tests.conftest import API_TOKEN, ServerFactory

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")
PASSCODE = "Browser-Passc0de-9f2"


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    if not (CHROMEDRIVER.exists() and CHROMIUM.exists()):
        pytest.fail("Install the Debian packages chromium and chromium-driver (make test does).")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    yield driver
    driver.quit()


def _text_of(driver: WebDriver, element_id: str) -> str:
    """The element's text, or "" while the page is (re)loading."""
    try:
        return str(driver.find_element(By.ID, element_id).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def test_create_a_backup_through_the_pages(
    browser: WebDriver, serve: ServerFactory, tree: Path
) -> None:
    server = serve([tree])
    wait = WebDriverWait(browser, 60, poll_frequency=0.1)
    backups = f"{server.url}/admin/system/disasterrecovery/stores/backupsDefault/backups"

    browser.get(backups)
    assert browser.title.startswith("Sign in")
    browser.find_element(By.ID, "token").send_keys(API_TOKEN)
    browser.find_element(By.ID, "sign-in").click()
    # The sign-in page is served at the same URL, so wait for the list itself.
    wait.until(lambda d: "No backups yet." in d.page_source)
    assert browser.current_url == backups

    browser.find_element(By.ID, "create").click()
    assert tree.name in browser.find_element(By.TAG_NAME, "main").text  # what it backs up
    browser.find_element(By.ID, "name").send_keys("from-the-browser")
    browser.find_element(By.ID, "passcode").send_keys(PASSCODE)
    browser.find_element(By.ID, "description").send_keys("clicked together")
    Select(browser.find_element(By.ID, "keepDays")).select_by_value("14")
    browser.find_element(By.ID, "submit").click()

    wait.until(lambda d: "/admin/jobs/j" in d.current_url)
    job_page = browser.current_url
    wait.until(lambda d: _text_of(d, "status") in ("COMPLETED", "FAILED", "CANCELLED"))
    assert _text_of(browser, "status") == "COMPLETED"
    assert browser.current_url == job_page  # the page reloaded itself in place
    assert PASSCODE not in browser.page_source

    browser.find_element(By.ID, "store").click()
    wait.until(lambda d: d.current_url == backups and "from-the-browser" in _text_of(d, "backups"))
    table = browser.find_element(By.ID, "backups").text
    assert "from-the-browser" in table
    assert "clicked together" in table
    browser.find_element(By.LINK_TEXT, "from-the-browser").click()
    assert "Backup from-the-browser" in browser.title
    assert PASSCODE not in browser.page_source
