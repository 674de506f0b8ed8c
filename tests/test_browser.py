"""The `make demo` page driven by a real headless Chromium, as a person would use it.

One page with both demos (`training.demo.build_demo`) serves the fake exports that the two app
tests define: upload a picture and press Caption; switch to the chatbot tab, type a message and
press Enter. Each step waits (bounded) for the answer to appear on the page and keeps a
screenshot; when /tmp/glimpse exists the screenshots are copied there to be looked at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.app import example_images
from shared import serving
from tests.captioner.test_app import (
    FAKE_SIZE,
    bright_square_picture,
    free_port,
    write_fake_captioner,
)
from tests.chatbot.test_app import write_fake_chatbot
from training.demo import build_demo

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_ARGUMENTS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1500",
)
WAIT_SECONDS = 60
TEMPERATURE = "//*[normalize-space(text())='Temperature']"
SCREENSHOT_COPIES = Path("/tmp/glimpse")


def require_browser() -> None:
    """Fails under CI (which must have the browser), skips elsewhere, when it is missing."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        reason = (
            f"{' and '.join(missing)} not installed: run `make system-deps` "
            "(apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    write_fake_captioner(runs / "captioner")
    write_fake_chatbot(runs / "chatbot")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        demo = build_demo(runs)
        try:
            _, url, _ = serving.launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
            yield url
        finally:
            demo.close()


@pytest.fixture
def browser(tmp_path):
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in CHROME_ARGUMENTS:
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, what: str):
    """Waits up to `WAIT_SECONDS` for `condition(driver)` to be truthy; fails naming `what`."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_SECONDS).until(condition)
    except TimeoutException:
        pytest.fail(f"waited {WAIT_SECONDS} s for {what}; page text: {page_text(driver)[:2000]}")


def page_text(driver) -> str:
    return driver.find_element("tag name", "body").text


def keep_screenshot(driver, path: Path) -> Path:
    """Saves a screenshot to `path` (and a copy into /tmp/glimpse when that folder exists)."""
    assert driver.save_screenshot(str(path))
    if SCREENSHOT_COPIES.is_dir():
        shutil.copy(path, SCREENSHOT_COPIES / path.name)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= 800 and image.height >= 600
    return path


def caption_box(driver) -> str:
    return driver.find_element("css selector", "#caption-text textarea").get_property("value")


def test_caption_a_picture_in_the_browser(browser, page_url, tmp_path):
    picture = bright_square_picture(tmp_path / "picture.png")
    browser.get(page_url)
    wait_for(browser, lambda d: d.find_elements("css selector", "#caption-button"), "the page")

    browser.find_element("css selector", "#picture input[type=file]").send_keys(str(picture))
    wait_for(browser, lambda d: d.find_elements("css selector", "#picture img"), "the upload")
    browser.find_element("css selector", "#caption-button").click()

    wait_for(browser, lambda d: caption_box(d) == "a blue image", "the caption 'a blue image'")
    wait_for(
        browser,
        lambda d: len(d.find_elements("css selector", "#attention img")) >= 3,
        "one attention panel per word",
    )
    # An example picture: the fake model names its dominant colour.
    first_example = example_images(FAKE_SIZE)[0]
    with Image.open(first_example) as image:
        mean_rgb = np.asarray(image.convert("RGB"), np.float32).mean(axis=(0, 1))
    expected = f"a {('red', 'green', 'blue')[int(mean_rgb.argmax())]} image"
    assert expected != "a blue image"  # else this step would prove nothing
    browser.find_element("css selector", "#examples img").click()
    browser.find_element("css selector", "#caption-button").click()
    wait_for(browser, lambda d: caption_box(d) == expected, f"the caption {expected!r}")

    screenshot = keep_screenshot(browser, tmp_path / "browser_captioner.png")
    assert screenshot.stat().st_size > 20_000  # a rendered page, not a blank one
    assert "Glimpse: image captioner" in page_text(browser)


def test_chat_in_the_browser(browser, page_url, tmp_path):
    from selenium.webdriver.common.keys import Keys

    browser.get(page_url)
    tab = "//button[@role='tab' and contains(normalize-space(.), 'Chatbot')]"
    wait_for(browser, lambda d: d.find_elements("xpath", tab), "the chatbot tab")
    browser.find_element("xpath", tab).click()
    box = wait_for(
        browser,
        lambda d: [
            e for e in d.find_elements("css selector", "#message textarea") if e.is_displayed()
        ],
        "the message box",
    )[0]
    box.send_keys("hello there world", Keys.ENTER)

    wait_for(
        browser,
        lambda d: "world there hello" in d.find_element("css selector", "#conversation").text,
        "the reply 'world there hello'",
    )
    wait_for(browser, lambda d: d.find_elements("css selector", "#heatmap img"), "the heatmap")

    # Sampling shows its settings, and the fake model answers in capitals when it samples.
    assert not any(e.is_displayed() for e in browser.find_elements("xpath", TEMPERATURE))
    browser.find_element("xpath", "//label[contains(normalize-space(.), 'sampling')]").click()
    wait_for(
        browser,
        lambda d: any(e.is_displayed() for e in d.find_elements("xpath", TEMPERATURE)),
        "the temperature slider",
    )
    box.send_keys("good morning", Keys.ENTER)
    wait_for(
        browser,
        lambda d: "MORNING GOOD" in d.find_element("css selector", "#conversation").text,
        "the sampled reply 'MORNING GOOD'",
    )
    screenshot = keep_screenshot(browser, tmp_path / "browser_chatbot.png")
    assert screenshot.stat().st_size > 20_000
    conversation = browser.find_element("css selector", "#conversation").text
    assert "hello there world" in conversation and "world there hello" in conversation
