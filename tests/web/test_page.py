"""The search page in headless Chromium (Debian's chromium and chromium-driver, driven by Selenium):
type a query, see the grid, click "more like this", upload an image, save a screenshot."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, "install Debian's chromium and chromium-driver (.ci/run does)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to see refused scripts and styles
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(browser: webdriver.Chrome, status_part: str) -> list[str]:
    """Wait until the status line says `status_part` and every thumbnail has loaded; the hit keys."""
    WebDriverWait(browser, 60).until(lambda b: status_part in b.find_element(By.ID, "status").text)
    WebDriverWait(browser, 30).until(
        lambda b: b.execute_script(
            "return [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)"
        )
    )
    return [element.text for element in browser.find_elements(By.CSS_SELECTOR, "#grid .hit .key")]


def test_search_more_like_this_and_upload(
    browser: webdriver.Chrome, served: tuple[str, Path], tmp_path: Path
) -> None:
    browser.get(served[0] + "/")
    box = browser.find_element(By.ID, "q")
    box.send_keys("a yellow circle")
    browser.find_element(By.ID, "go").click()
    keys = wait_for(browser, "(vector)")
    assert len(keys) == 20 and Path(keys[0]).stem.endswith("-yellow-circle")
    assert browser.execute_script("return document.querySelectorAll('#grid img').length") == 20

    browser.find_elements(By.CSS_SELECTOR, "#grid .hit .more")[1].click()
    similar = wait_for(browser, "(similar)")
    assert keys[1] not in similar and "yellow-circle" in similar[0]
    assert (
        f"like {keys[1]}" in browser.find_element(By.ID, "status").text
    )  # what was asked, and no stale text
    assert browser.find_element(By.ID, "q").get_attribute("value") == ""
    buttons_in_a_row = browser.execute_script(
        "const rows = {}; for (const card of document.querySelectorAll('#grid .hit')) {"
        " const top = Math.round(card.querySelector('.more').getBoundingClientRect().top);"
        " (rows[card.offsetTop] ||= []).push(top); }"
        " return Object.values(rows).map((tops) => new Set(tops).size);"
    )
    assert buttons_in_a_row and set(buttons_in_a_row) == {1}  # "more like this" lines up across a row

    first = browser.find_element(By.CSS_SELECTOR, "#grid .hit").get_attribute("data-id")
    star = httpx.get(served[0] + "/api/search", params={"q": "a blue star", "k": 1}, timeout=60).json()
    upload = Path(star["hits"][0]["uri"])
    browser.find_element(By.ID, "image").send_keys(str(upload))
    by_image = wait_for(browser, "(image)")
    assert by_image[0].endswith(upload.name)
    assert browser.find_element(By.CSS_SELECTOR, "#grid .hit").get_attribute("data-id") != first

    where = browser.find_element(By.ID, "where")
    where.send_keys("nosuch = 1")
    browser.find_element(By.ID, "go").click()  # the box is empty after the upload: type a query first
    box.send_keys("a red star")
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 60).until(
        lambda b: "error" in (b.find_element(By.ID, "status").get_attribute("class") or "")
    )
    assert "nosuch" in browser.find_element(By.ID, "status").text
    assert browser.find_elements(By.CSS_SELECTOR, "#grid .hit") == []  # the error replaced the results
    where.clear()
    Select(browser.find_element(By.ID, "synthetic")).select_by_value("only")
    wait_for(browser, "no results")  # this table holds no generated image

    shot = tmp_path / "search-page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    refused = [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Content Security Policy" in entry["message"]
    ]
    assert not refused, refused  # the page lives within the policy its server sends
