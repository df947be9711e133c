"""The admin pages in a real headless Chromium against a real `strongroom serve`:
sign in, create a backup through the form, watch its job end, find it in the list.

Needs the Debian packages `chromium` and `chromium-driver` (`make test` installs them).
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from strongroom.format import from_epoch_ms
from strongroom.units import human_size
from tests.conftest import API_TOKEN, Server, ServerFactory

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")
PASSCODE = "Browser-Passc0de-9f2"
DR = "/admin/system/disasterrecovery"
STORE = f"{DR}/stores/backupsDefault"


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
    """The element's text, or "" while the page is (re)loading: the element found is gone
    before its text is read (chromedriver says so as a stale element or, at times, as an
    "unhandled inspector error: Node with given id does not belong to the document")."""
    try:
        return str(driver.find_element(By.ID, element_id).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return ""
        raise


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


# -- readable pages (issue #19) -------------------------------------------------------------


def _sign_in(browser: WebDriver, server: Server, page: str) -> None:
    """Open `page` (a path under the server) and sign in on the form it answers with."""
    browser.get(server.url + page)
    browser.find_element(By.ID, "token").send_keys(API_TOKEN)
    browser.find_element(By.ID, "sign-in").click()
    WebDriverWait(browser, 30).until(lambda d: not d.title.startswith("Sign in"))


def _create(server: Server, name: str, **form: str) -> dict[str, Any]:
    """A backup made through the API; its finished job."""
    submitted = server.post(f"{STORE}/backups/create", name=name, passcode=PASSCODE, **form)
    assert submitted.status_code == 200, submitted.text
    job = server.wait_for_job(submitted.json()["jobsUrl"])
    assert job["status"] == "COMPLETED", job
    return job


def _rows(browser: WebDriver, table_id: str) -> dict[str, list[str]]:
    """A table's rows (not its header) by the text of their first cell."""
    table = browser.find_element(By.ID, table_id)
    rows = {}
    for row in table.find_elements(By.XPATH, ".//tr[td]"):
        cells = [cell.text for cell in row.find_elements(By.XPATH, "./th|./td")]
        rows[cells[0]] = cells[1:]
    return rows


def test_the_jobs_pages_show_sizes_and_the_result_as_a_table(
    browser: WebDriver, serve: ServerFactory, tree: Path
) -> None:
    server = serve([tree])
    job = _create(server, "readable")
    result = job["result"]
    _sign_in(browser, server, "/admin/jobs")

    row = _rows(browser, "jobs")[job["jobid"]]
    transferred = row[5]
    assert re.fullmatch(r"[\d.]+ kB of [\d.]+ kB", transferred), row
    assert str(job["progress"]["bytesDone"]) not in browser.page_source

    browser.find_element(By.LINK_TEXT, job["jobid"]).click()
    WebDriverWait(browser, 30).until(lambda d: "/admin/jobs/j" in d.current_url)
    table = _rows(browser, "result")
    assert table["Source size"] == [human_size(result["sourceSize"])]
    assert table["Stored size"] == [human_size(result["storedSize"])]
    assert table["Completed"] == [f"{from_epoch_ms(result['completeTime']):%Y-%m-%d %H:%M:%S} UTC"]
    assert table["Retention date"] == ["kept until deleted"]
    assert str(result["completeTime"]) not in browser.page_source
    assert transferred in _text_of(browser, "progress")
    assert PASSCODE not in browser.page_source


def test_the_backups_page_shows_sizes_and_acts_on_each_backup(
    browser: WebDriver, serve: ServerFactory, tree: Path
) -> None:
    server = serve([tree])
    long_name = "nightly_without_a_break_" + "0123456789" * 10
    for name in ("first", long_name):
        _create(server, name)
    source = human_size(server.get(f"{STORE}/backups/first").json()["sourceSize"])
    browser.set_window_size(900, 900)
    _sign_in(browser, server, f"{STORE}/backups")

    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#backups th")]
    assert headers[3:5] == ["Source size", "Stored size"]
    rows = _rows(browser, "backups")
    assert rows["first"][2] == source
    assert rows["first"][-1] == "restore · verify · delete"
    page_width = browser.execute_script("return document.documentElement.scrollWidth")
    assert page_width <= browser.execute_script("return window.innerWidth"), "names must wrap"

    row = browser.find_element(By.XPATH, "//tr[td/a[text()='first']]")
    row.find_element(By.LINK_TEXT, "verify").click()
    assert browser.current_url.endswith("/backups/first#verify")
    verify = browser.find_element(By.ID, "verify")
    verify.find_element(By.NAME, "passcode").send_keys(PASSCODE)
    verify.find_element(By.TAG_NAME, "button").click()
    WebDriverWait(browser, 60).until(lambda d: _text_of(d, "status") == "COMPLETED")
    assert _rows(browser, "result")["Name"] == ["first"]

    browser.get(f"{server.url}{STORE}/backups")
    row = browser.find_element(By.XPATH, "//tr[td/a[text()='first']]")
    row.find_element(By.LINK_TEXT, "delete").click()
    delete = browser.find_element(By.ID, "delete")
    delete.find_element(By.TAG_NAME, "button").click()  # not confirmed: the browser refuses
    assert browser.current_url.endswith("/backups/first#delete")
    assert server.get(f"{STORE}/backups/first").status_code == 200
    browser.find_element(By.ID, "confirm-delete").click()
    delete.find_element(By.TAG_NAME, "button").click()
    WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith("/backups"))
    assert list(_rows(browser, "backups")) == [long_name]


@contextmanager
def _site_serving(directory: Path) -> Iterator[str]:
    """Another site's pages on this host: `directory` served on a port of its own."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(directory))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as site:
        thread = threading.Thread(target=site.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{site.server_address[1]}"
        finally:
            site.shutdown()


def test_another_page_cannot_frame_the_pages_nor_back_show_them_signed_out(
    browser: WebDriver, serve: ServerFactory, tree: Path, tmp_path: Path
) -> None:
    """The attacks of a trial: a page on another port of the host (the same site, so the
    SameSite cookie goes along) framed a backup's page see-through, and two clicks in the
    frame deleted the backup; after Sign out, Back showed the decrypted contents again."""
    server = serve([tree])
    _create(server, "framed")
    backup = f"{STORE}/backups/framed"
    evil = tmp_path / "evil"
    evil.mkdir()
    frame = f'<iframe id="victim" src="{server.url}{backup}#delete" style="opacity:.5"></iframe>'
    (evil / "frame.html").write_text(f"<!doctype html><p>Win a prize!</p>{frame}")
    _sign_in(browser, server, backup)
    assert browser.find_elements(By.ID, "confirm-delete")  # signed in, the page shows it

    with _site_serving(evil) as site:
        browser.get(f"{site}/frame.html")
        browser.switch_to.frame("victim")
        assert not browser.find_elements(By.ID, "confirm-delete"), "the page was framed"
        browser.switch_to.default_content()

    browser.get(server.url + backup)
    contents = browser.find_element(By.ID, "contents")
    contents.find_element(By.NAME, "passcode").send_keys(PASSCODE)
    contents.find_element(By.TAG_NAME, "button").click()
    WebDriverWait(browser, 30).until(lambda d: d.title.startswith("Contents of framed"))
    browser.find_element(By.XPATH, "//button[text()='Sign out']").click()
    WebDriverWait(browser, 30).until(lambda d: d.title.startswith("Sign in"))
    browser.back()  # to the contents
    assert "notes.md" not in browser.page_source and "Contents of" not in browser.title
    browser.back()  # to the backup's page
    assert not browser.find_elements(By.ID, "confirm-delete")
    assert server.get(backup).status_code == 200  # nothing was deleted


def test_a_backup_is_kept_until_a_day_chosen_in_the_form(
    browser: WebDriver, serve: ServerFactory, tree: Path
) -> None:
    server = serve([tree])
    _sign_in(browser, server, f"{STORE}/backups/create")
    day = datetime.now(UTC).date() + timedelta(days=45)

    def submit(name: str, chosen: date) -> None:
        browser.find_element(By.ID, "name").send_keys(name)
        browser.find_element(By.ID, "passcode").send_keys(PASSCODE)
        Select(browser.find_element(By.ID, "keepDays")).select_by_value("date")
        browser.find_element(By.ID, "retentionDay").send_keys(f"{chosen:%m%d%Y}")
        browser.find_element(By.ID, "submit").click()

    submit("too-late", day - timedelta(days=90))
    WebDriverWait(browser, 30).until(lambda d: d.title.startswith("Error 400"))
    errors = browser.find_elements(By.CLASS_NAME, "error")
    past = f"{day - timedelta(days=90):%Y-%m-%d}"
    assert [e.text for e in errors] == [
        f"The retention date {past} is not in the future (it starts at 00:00 UTC); "
        "choose a later day, a number of days, or never."
    ]

    browser.get(f"{server.url}{STORE}/backups/create")
    submit("until-a-day", day)
    WebDriverWait(browser, 60).until(lambda d: _text_of(d, "status") == "COMPLETED")
    assert _rows(browser, "result")["Retention date"] == [f"{day:%Y-%m-%d} 00:00:00 UTC"]
    assert server.get(f"{STORE}/backups/until-a-day").json()["retentionDate"] == int(
        datetime.combine(day, datetime.min.time(), UTC).timestamp() * 1000
    )


def test_a_store_is_registered_with_the_fields_of_the_stores_page(
    browser: WebDriver, serve: ServerFactory, tree: Path, home: Path
) -> None:
    allowed = home / "allowed"
    server = serve([tree], "--allow-store", allowed.as_uri() + "/")
    _sign_in(browser, server, f"{DR}/stores")

    def fill(fields: dict[str, str]) -> None:
        for field_id, value in fields.items():
            element = browser.find_element(By.ID, field_id)
            element.clear()
            element.send_keys(value)
        browser.find_element(By.ID, "register-store").click()

    fill({"storeName": "offsite", "url": (home / "elsewhere").as_uri(), "option1Value": "x"})
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CLASS_NAME, "error"))
    assert [e.text for e in browser.find_elements(By.CLASS_NAME, "error")] == [
        "Option row 1 has a value but no name."
    ]
    assert (
        browser.find_element(By.ID, "url").get_attribute("value") == (home / "elsewhere").as_uri()
    )
    assert browser.find_element(By.ID, "option1Value").get_attribute("value") == ""

    fill({"option1Key": "region", "option1Value": "eu-west-1"})
    WebDriverWait(browser, 30).until(lambda d: "region" in _text_of(d, "register"))
    errors = [e.text for e in browser.find_elements(By.CLASS_NAME, "error")]
    assert len(errors) == 1 and "is not under a location this server allows" in errors[0]

    fill({"url": (allowed / "offsite").as_uri(), "option1Key": "", "option1Value": ""})
    WebDriverWait(browser, 30).until(lambda d: d.title.startswith("Store offsite"))
    assert not browser.find_elements(By.CLASS_NAME, "error")
    assert server.get(f"{DR}/stores/offsite").json()["url"] == (allowed / "offsite").as_uri()
