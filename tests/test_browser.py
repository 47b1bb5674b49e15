"""The web page in Debian's headless Chromium (via chromedriver) against a real ``pix2tex serve``."""

from __future__ import annotations

import base64
import os
import shutil

import pytest
from PIL import Image

from benchmarks.serve import Server
from pix2tex.inference import LatexOCR
from pix2tex.render import render_images

pytestmark = [pytest.mark.tex, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 300  # guards against a hang only; a reading takes about a second on an idle machine


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(tmpdir=tmp_path_factory.mktemp("browser-tmp")) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM and CHROMEDRIVER, "the browser tests need Debian's chromium and chromium-driver (make install)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # given explicitly: selenium must not look for (or download) a browser
    flags = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,820")
    for flag in flags:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def formula_png(tmp_path_factory):
    (result,) = render_images([r"\int_0^1 x^2 \, dx = \frac{1}{3}"], dpi=160)
    path = tmp_path_factory.mktemp("browser-img") / "formula.png"
    result.image.save(path)
    return path


def _wait(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(condition, message=what)


def _preview_shows(driver, latex: str) -> bool:
    return driver.execute_script(
        "const p = document.getElementById('preview');"
        "return !p.hidden && p.complete && p.naturalWidth > 0 && p.dataset.latex === arguments[0];", latex)


def test_upload_reads_renders_edits_and_pastes(server, browser, formula_png, tmp_path):
    from selenium.webdriver.common.by import By

    expected = LatexOCR()(formula_png)  # what the model reads, as the library gives it
    browser.get(server.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(formula_png))
    latex_box = browser.find_element(By.ID, "latex")
    _wait(browser, lambda _driver: latex_box.get_attribute("value"), "no LaTeX appeared")
    assert latex_box.get_attribute("value") == expected
    _wait(browser, lambda d: _preview_shows(d, expected.strip()), "the LaTeX was not rendered back")
    assert browser.find_element(By.ID, "input").get_attribute("naturalWidth") == str(Image.open(formula_png).width)
    assert "confidence" in browser.find_element(By.ID, "meta").text
    assert browser.find_element(By.ID, "copy").is_enabled()
    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot))
    assert Image.open(shot).size == tuple(browser.execute_script("return [innerWidth, innerHeight]"))
    if os.environ.get("PIX2TEX_SCREENSHOT"):  # README's picture: PIX2TEX_SCREENSHOT=docs/serve.png pytest -k upload
        shutil.copyfile(shot, os.environ["PIX2TEX_SCREENSHOT"])

    # Editing the LaTeX renders it again.
    latex_box.clear()
    latex_box.send_keys(r"\frac{a}{b}")
    _wait(browser, lambda d: _preview_shows(d, r"\frac{a}{b}"), "an edit was not re-rendered")

    # A formula TeX refuses shows TeX's reason instead of a picture.
    latex_box.clear()
    latex_box.send_keys(r"\frac{a}")
    _wait(browser, lambda d: "Missing } inserted" in d.find_element(By.ID, "preview-error").text,
          "TeX's reason was not shown")

    # Pasting an image (Ctrl+V) reads it like an upload.
    data = base64.b64encode(formula_png.read_bytes()).decode()
    latex_box.clear()
    browser.execute_script(
        "const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));"
        "const dt = new DataTransfer();"
        "dt.items.add(new File([bytes], 'clip.png', {type: 'image/png'}));"
        "document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt}));", data)
    _wait(browser, lambda _driver: latex_box.get_attribute("value") == expected, "a pasted image was not read")

    # Dropping it on the image pane reads it too (the handlers are pix2tex/web/input.js, shared with
    # the in-browser reader's page).
    latex_box.clear()
    browser.execute_script(
        "const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));"
        "const dt = new DataTransfer();"
        "dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));"
        "document.getElementById('drop').dispatchEvent("
        "  new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));", data)
    _wait(browser, lambda _driver: latex_box.get_attribute("value") == expected, "a dropped image was not read")

    # The page asked no other host for anything.
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(server.url) or u.startswith(("blob:", "data:")) for u in urls), urls


def test_unreadable_file_shows_the_reason(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    fake = tmp_path / "notes.png"
    fake.write_bytes(b"these are notes, not pixels")
    browser.get(server.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(fake))
    status = browser.find_element(By.ID, "status")
    _wait(browser, lambda _driver: "not an image" in status.text, "no error shown")
    assert status.text == "notes.png: not an image (cannot identify format)"
    assert "error" in status.get_attribute("class")
