"""The drawing page in a real browser (Debian's headless Chromium under Selenium): characters drawn
stroke by stroke from KanjiVG paths with pen pointer events are read in the browser without a word
to the server; undo, clear, picking a candidate, image upload and paste; the raw strokes sent to the server on
request, and the fallback to the server when WebAssembly is unavailable. Leaves a screenshot of the
page in docs/images/web_page.png. The drivers are those of `kanjirec bench web`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.keys import Keys

from kanjirec.benchmarks.web import DrawingPage, chromium, page_service
from kanjirec.data.kanjivg import load_kanjivg
from kanjirec.data.pen import strokes_to_image

# Three kana and 17 kanji of the first school year: 1 to 12 strokes, simple and crowded.
DRAWN = "あかさ日水木土山川田人口目手足雨学校気花"
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "web_page.png"
RECOGNIZE = ("POST", "/recognize", "application/json")


@pytest.fixture(scope="module")
def kanjivg():
    return load_kanjivg()


@pytest.fixture(scope="module")
def service():
    with page_service() as service:  # the shipped model
        yield service


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def test_characters_drawn_stroke_by_stroke_are_read_in_the_browser(service, browser, kanjivg):
    page = DrawingPage(browser, service.url)
    assert page.ready == "wasm", page.status
    assert "in this browser" in page.status
    # Everything the page loaded came from the service: no fonts, scripts or models from elsewhere.
    assert all(url.startswith(service.url) for url, _ in page.resources())
    before = len(service.requests)
    read = {}
    for char in DRAWN:
        candidates = page.draw_char(char, kanjivg)
        assert len(candidates) == 10
        probs = [p for _, p in candidates]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.01
        read[char] = [c for c, _ in candidates]
        if char != DRAWN[-1]:
            page.click("clear")
    SCREENSHOT.write_bytes(browser.get_screenshot_as_png())  # the README shows it
    assert np.asarray(Image.open(io.BytesIO(SCREENSHOT.read_bytes())).convert("L")).std() > 10
    assert service.requests[before:] == []  # recognised in the browser: not one request to the server
    assert [c for c in DRAWN if read[c][0] != c] == [], read
    assert [c for c in DRAWN if c not in read[c]] == []
    timings = page.timings()
    assert {t["backend"] for t in timings} == {"wasm"}
    assert len(timings) >= sum(len(kanjivg[c].strokes) for c in DRAWN)  # candidates after every stroke


def test_undo_and_clear(service, browser, kanjivg):
    page = DrawingPage(browser, service.url)
    strokes = [s.points for s in kanjivg["土"].strokes]
    for points in strokes[:2]:
        page.draw_stroke(points)
    after_two = page.candidates()
    page.draw_stroke(strokes[2])
    assert page.candidates()[0][0] == "土"

    page.click("undo")
    assert page.strokes() == 2 and page.candidates() == after_two
    page.press(Keys.CONTROL, "z")
    assert page.strokes() == 1 and page.candidates() != after_two
    page.press(Keys.BACKSPACE)
    assert page.strokes() == 0 and page.candidates() == []

    page.draw_char("十", kanjivg)
    page.click("clear")
    assert page.strokes() == 0 and page.candidates() == []
    for points in strokes[:2]:  # nothing of the cleared drawing is left over
        page.draw_stroke(points)
    assert page.candidates() == after_two
    page.press(Keys.ESCAPE)
    assert page.strokes() == 0 and page.candidates() == []


def test_a_picked_candidate_is_copied_and_added_to_the_text(service, browser, kanjivg):
    page = DrawingPage(browser, service.url)
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": service.url.rstrip("/"), "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    first = page.draw_char("川", kanjivg)
    assert first[0][0] == "川"
    page.press("1")
    browser.find_elements("css selector", "#candidates button")[1].click()
    assert browser.find_element("id", "text").get_attribute("value") == "川" + first[1][0]
    clipboard = browser.execute_async_script("navigator.clipboard.readText().then(arguments[0])")
    assert clipboard == first[1][0], page.status


def test_the_raw_strokes_go_to_the_server_on_request(service, browser, kanjivg):
    page = DrawingPage(browser, service.url, backend="server")
    assert page.ready == "server" and "on the server" in page.status
    before = len(service.requests)
    assert page.draw_char("山", kanjivg)[0][0] == "山"
    assert service.requests[before:] == [RECOGNIZE] * 3  # one POST of the strokes JSON per stroke


def test_an_uploaded_image_is_read_by_the_server(service, browser, kanjivg, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    page = DrawingPage(browser, service.url)
    ink = strokes_to_image([s.points * 2 for s in kanjivg["木"].strokes], 218, 218, 128)
    png = tmp_path / "ki.png"
    Image.fromarray(255 - ink).save(png)  # dark ink on white paper, as a scan
    before = len(service.requests)
    browser.find_element("id", "upload").send_keys(str(png))
    WebDriverWait(browser, 30, 0.01).until(lambda d: "Candidates for the image" in page.status)
    assert page.candidates()[0][0] == "木"
    assert service.requests[before:] == [("POST", "/recognize", "multipart/form-data")]


def test_a_pasted_image_is_read_by_the_server(service, browser, kanjivg):
    import base64

    from selenium.webdriver.support.ui import WebDriverWait

    page = DrawingPage(browser, service.url)
    ink = strokes_to_image([s.points * 2 for s in kanjivg["水"].strokes], 218, 218, 128)
    buffer = io.BytesIO()
    Image.fromarray(255 - ink).save(buffer, format="PNG")
    before = len(service.requests)
    # What Ctrl+V with an image on the clipboard delivers: a paste event carrying the file.
    browser.execute_script(
        """
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], "", { type: "image/png" }));
        document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, cancelable: true }));
        """,
        base64.b64encode(buffer.getvalue()).decode(),
    )
    WebDriverWait(browser, 30, 0.01).until(lambda d: "pasted from the clipboard" in page.status)
    assert page.candidates()[0][0] == "水"
    assert service.requests[before:] == [("POST", "/recognize", "multipart/form-data")]


def test_without_webassembly_the_page_falls_back_to_the_server(service, kanjivg):
    with chromium(wasm=False) as driver:
        page = DrawingPage(driver, service.url)
        assert page.ready == "server"
        assert "WebAssembly is not available" in page.status and "on the server" in page.status
        assert driver.find_element("css selector", '#backend option[value="wasm"]').get_attribute("disabled")
        before = len(service.requests)
        read = []
        for char in "田あ":
            read.append(page.draw_char(char, kanjivg)[0][0])
            page.click("clear")
        assert read == list("田あ")
        assert service.requests[before:] == [RECOGNIZE] * (5 + 3)


def test_the_page_fits_a_phone_screen(service, browser):
    browser.set_window_size(390, 844)
    try:
        page = DrawingPage(browser, service.url)
        width, scroll_width, pad = browser.execute_script(
            "const b = document.getElementById('pad').getBoundingClientRect();"
            "return [innerWidth, document.documentElement.scrollWidth, [b.left, b.right, b.width, b.height]]"
        )
        assert scroll_width <= width  # nothing sticks out sideways
        assert pad[0] >= 0 and pad[1] <= width and pad[2] == pad[3] >= 0.8 * width  # square, near full width
        assert page.ready == "wasm"
    finally:
        browser.set_window_size(900, 1000)


def test_the_exported_page_works_on_a_static_host(browser, kanjivg, tmp_path):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from kanjirec.serve.web import export_web

    site = export_web(tmp_path / "site")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    host = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=host.serve_forever, daemon=True).start()
    try:
        page = DrawingPage(browser, f"http://127.0.0.1:{host.server_address[1]}/")
        assert page.ready == "wasm"
        server_option = browser.find_element("css selector", '#backend option[value="server"]')
        assert server_option.get_attribute("disabled")  # no server behind a static host
        assert page.draw_char("田", kanjivg)[0][0] == "田"
    finally:
        host.shutdown()
        host.server_close()
