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
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
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
    shots = tmp_path / "screenshots"
    shots.mkdir()

    def screenshot(name: str) -> None:
        assert (
            browser.save_screenshot(str(shots / f"{name}.png"))
            and (shots / f"{name}.png").stat().st_size > 10_000
        )

    browser.get(served[0] + "/")
    WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#examples button"))
    assert "98 images" in browser.find_element(By.ID, "start").text  # the start page: size, model, captions
    assert "toy-clip" in browser.find_element(By.ID, "start-facts").text
    screenshot("1-start")
    example = browser.find_element(By.CSS_SELECTOR, "#examples button")
    asked = example.text
    example.click()
    wait_for(browser, "(vector)")
    assert "q=" in browser.current_url and browser.find_element(By.ID, "q").get_attribute("value") == asked
    browser.back()  # the query lives in the URL: Back returns to the start page, Forward to the results
    WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "start").is_displayed())
    browser.forward()
    wait_for(browser, "(vector)")

    box = browser.find_element(By.ID, "q")
    box.clear()
    box.send_keys("a yellow circle")
    browser.find_element(By.ID, "go").click()
    keys = wait_for(browser, "(vector)")
    assert len(keys) == 20 and Path(keys[0]).stem.endswith("-yellow-circle")
    assert browser.execute_script("return document.querySelectorAll('#grid img').length") == 20
    assert "results 1–20" in browser.find_element(By.ID, "status").text
    screenshot("2-results")
    bookmarked = browser.current_url
    browser.get(bookmarked)  # a bookmark opens the same search
    assert wait_for(browser, "(vector)") == keys

    browser.find_element(By.CSS_SELECTOR, "#grid .hit img").click()  # a larger view: original and columns
    WebDriverWait(browser, 30).until(
        lambda b: b.execute_script(
            "const i = document.getElementById('view-image'); return document.getElementById('view').open"
            " && i.complete && i.naturalWidth > 0 && i.src.includes('/api/original/')"
        )
    )
    WebDriverWait(browser, 30).until(lambda b: "uri" in b.find_element(By.ID, "view-columns").text)
    assert keys[0] in browser.find_element(By.ID, "view-key").text
    screenshot("3-view")
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    WebDriverWait(browser, 10).until(
        lambda b: not b.execute_script("return document.getElementById('view').open")
    )

    browser.find_element(By.TAG_NAME, "body").click()
    ActionChains(browser).send_keys(Keys.ARROW_RIGHT).perform()  # keyboard: the next page
    WebDriverWait(browser, 30).until(lambda b: "offset=20" in b.current_url)
    wait_for(browser, "results 21–")
    ActionChains(browser).send_keys(Keys.ARROW_LEFT).perform()
    assert wait_for(browser, "results 1–20") == keys
    ActionChains(browser).send_keys(Keys.ARROW_DOWN, Keys.ARROW_RIGHT).perform()  # into the grid, one right
    focused = browser.execute_script("return document.activeElement.dataset.id")
    assert focused == browser.find_elements(By.CSS_SELECTOR, "#grid .hit")[1].get_attribute("data-id")
    ActionChains(browser).send_keys("/").perform()
    assert browser.execute_script("return document.activeElement.id") == "q"

    browser.find_elements(By.CSS_SELECTOR, "#grid .hit .more")[1].click()
    similar = wait_for(browser, "(similar)")
    assert keys[1] not in similar and "yellow-circle" in similar[0]
    assert (
        f"like {keys[1]}" in browser.find_element(By.ID, "status").text
    )  # what was asked, and no stale text
    assert browser.find_element(By.ID, "q").get_attribute("value") == ""
    assert "like=" in browser.current_url
    assert browser.execute_script(  # the row it started from is shown
        "const i = document.getElementById('asked-image'); return i.complete && i.naturalWidth > 0"
    )
    screenshot("4-more-like-this")
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
    assert upload.name in browser.find_element(By.ID, "asked-label").text  # the query image is shown
    screenshot("5-upload")
    assert browser.find_element(By.CSS_SELECTOR, "#grid .hit").get_attribute("data-id") != first

    where = browser.find_element(By.ID, "where")
    where.send_keys("nosuch = 1")
    browser.find_element(By.ID, "go").click()  # the box is empty after the upload: type a query first
    browser.find_element(By.ID, "q").send_keys("a red star")
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 60).until(
        lambda b: "error" in (b.find_element(By.ID, "status").get_attribute("class") or "")
    )
    assert "nosuch" in browser.find_element(By.ID, "status").text
    assert browser.find_elements(By.CSS_SELECTOR, "#grid .hit") == []  # the error replaced the results
    screenshot("6-error")
    where.clear()
    Select(browser.find_element(By.ID, "synthetic")).select_by_value("only")
    wait_for(browser, "no results")  # this table holds no generated image

    screenshot("7-synthetic-only")
    refused = [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Content Security Policy" in entry["message"]
    ]
    assert not refused, refused  # the page lives within the policy its server sends
