"""`kanjirec bench web`: the drawing page in headless Chromium, driven like a user.

The service (`serve.app.create_app`) runs in a thread on loopback and logs every request it gets;
Debian's Chromium (``/usr/bin/chromium``, driven by Selenium through ``/usr/bin/chromedriver``; no
browser is ever downloaded) opens the page, and characters are drawn stroke by stroke from their
KanjiVG paths as pen input (W3C actions: real pointer events, pressure included). After each stroke
the page's own clock measures the time from the end of the stroke (pointerup) to the new candidates
in the page. The figures: that latency per stroke (p50/p95) for recognition in the browser (WASM)
and on the server (the raw strokes POSTed to /recognize), top-1 and top-10 on the drawn characters,
and the page's total download (the browser's own byte counts, and what gzip makes of them).

tests/test_web_page.py drives the page with the same helpers.
"""

from __future__ import annotations

import gzip
import os
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kanjirec.errors import KanjirecError

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
POINT_STEP = 4  # of the KanjiVG points (1.5 units apart): 6 units, ~23 px on the pad, as a quick pen at 60 Hz
WAIT_S = 30.0


class BrowserError(KanjirecError):
    """Chromium, chromedriver or Selenium is missing, or the page did not answer in time."""


@dataclass
class PageService:
    """The service behind the page, running in this process."""

    url: str
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, content type)
    recognizer: object = None


@contextmanager
def page_service(model: str | Path | None = None) -> Iterator[PageService]:
    """`kanjirec serve` for ``model`` (None: the shipped model) on a free loopback port, in a thread,
    logging every HTTP request it receives."""
    import uvicorn

    from kanjirec.recognizer import Recognizer
    from kanjirec.serve.app import create_app

    recognizer = Recognizer.load(model)
    app = create_app(recognizer)
    service = PageService("", recognizer=recognizer)

    async def logged(scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            kind = headers.get(b"content-type", b"").decode("latin-1").split(";")[0]
            service.requests.append((scope["method"], scope["path"], kind))
        await app(scope, receive, send)

    server = uvicorn.Server(uvicorn.Config(logged, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise BrowserError("the service behind the page did not start")
        time.sleep(0.05)
    service.url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/"
    try:
        yield service
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def chromium(wasm: bool = True, width: int = 900, height: int = 1000):
    """A headless Debian Chromium under Selenium; ``wasm=False``: one without WebAssembly."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        raise BrowserError(
            f"{', '.join(missing)} not found: install Debian's chromium and chromium-driver "
            "(bash scripts/setup.sh does)"
        )
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        raise BrowserError("selenium is not installed: pip install -e '.[dev]'") from e
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # Chromium's sandbox refuses to run as root, as CI does
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--no-first-run",
        "--disable-frame-rate-limit",
        "--disable-gpu-vsync",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    if not wasm:
        # V8 without its JIT has no WebAssembly at all, as in the browsers' lockdown/hardened modes.
        options.add_argument("--js-flags=--jitless")
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    except WebDriverException as e:
        raise BrowserError(f"Chromium did not start under chromedriver: {e.msg}") from e
    try:
        yield driver
    finally:
        driver.quit()


class DrawingPage:
    """The page open in a browser, with what a user does on it."""

    def __init__(self, driver, url: str, backend: str = "wasm"):
        self.driver = driver
        driver.get(url + ("?backend=server" if backend == "server" else ""))
        self._until("document.body.dataset.ready", "the page did not start")
        self.pad = driver.find_element("id", "pad")

    def _until(self, script: str, what: str):
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, WAIT_S, poll_frequency=0.005).until(
                lambda d: d.execute_script("return " + script)
            )
        except TimeoutException as e:
            raise BrowserError(f"{what} within {WAIT_S:g} s; the page says: {self.status}") from e

    @property
    def ready(self) -> str:
        """The recognizer the page chose: "wasm", "server" or "none"."""
        return self.driver.execute_script("return document.body.dataset.ready")

    @property
    def status(self) -> str:
        return self.driver.find_element("id", "status").text

    def draw_stroke(self, points: np.ndarray, box: float = 109.0) -> None:
        """One pen stroke through ``points`` (k, 2) given in a ``box`` x ``box`` square spanning the pad;
        returns once the candidates for it are on the page."""
        from selenium.webdriver.common.actions import interaction
        from selenium.webdriver.common.actions.action_builder import ActionBuilder
        from selenium.webdriver.common.actions.pointer_input import PointerInput

        left, top, side = self.driver.execute_script(
            "const b = arguments[0].getBoundingClientRect(); return [b.left, b.top, b.width]", self.pad
        )
        at = np.asarray(points, np.float64) * (side / box) + [left, top]
        path = np.concatenate([at[:-1:POINT_STEP], at[-1:]]) if len(at) > 1 else at
        actions = ActionBuilder(self.driver, mouse=PointerInput(interaction.POINTER_PEN, "pen"), duration=0)
        pen = actions.pointer_action
        pen.move_to_location(round(path[0][0]), round(path[0][1]))
        pen.pointer_down(pressure=0.6)
        for x, y in path[1:]:
            pen.move_to_location(round(x), round(y), pressure=0.6)
        pen.pointer_up()
        actions.perform()
        self.wait()

    def draw_char(self, char: str, kanjivg: dict) -> list[tuple[str, float]]:
        """Draw ``char`` from its KanjiVG strokes, in writing order; returns the final candidates."""
        for stroke in kanjivg[char].strokes:
            self.draw_stroke(stroke.points)
        return self.candidates()

    def wait(self) -> None:
        """Until the candidates on the page are those of the current drawing."""
        self._until(
            "window.kanjirecPage.shown === window.kanjirecPage.version", "the candidates did not appear"
        )

    def candidates(self) -> list[tuple[str, float]]:
        """(character, probability) as the page shows them, most probable first."""
        shown = self.driver.execute_script(
            "return [...document.querySelectorAll('#candidates button')]"
            ".map(b => [b.querySelector('.char').textContent, b.querySelector('.prob').textContent])"
        )
        return [(char, float(percent.rstrip("%")) / 100) for char, percent in shown]

    def strokes(self) -> int:
        return self.driver.execute_script("return window.kanjirecPage.strokes.length")

    def click(self, element_id: str) -> None:
        self.driver.find_element("id", element_id).click()
        self.wait()

    def press(self, *keys: str) -> None:
        """Keys pressed together on the page (not in the text field), e.g. press(Keys.CONTROL, "z")."""
        from selenium.webdriver.common.action_chains import ActionChains

        chain = ActionChains(self.driver)
        for key in keys:
            chain.key_down(key)
        for key in reversed(keys):
            chain.key_up(key)
        chain.perform()
        self.wait()

    def timings(self) -> list[dict]:
        """Per recognition: {"backend", "strokes", "ms"} (stroke end to candidates on the page)."""
        return self.driver.execute_script("return window.kanjirecPage.timings")

    def resources(self) -> list[tuple[str, int]]:
        """(URL, body bytes) of the page and everything it loaded, as the browser counted them."""
        return [
            (name, int(size))
            for name, size in self.driver.execute_script(
                "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType("
                "'resource')).map(e => [e.name, e.encodedBodySize])"
            )
        ]


def _percentiles(ms: Sequence[float]) -> str:
    return f"p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms ({len(ms)} strokes)"


def bench_web(
    model: str | Path | None = None, chars: int = 100, server_chars: int = 20, seed: int = 0
) -> dict:
    """Draw ``chars`` characters (the model's classes that KanjiVG draws, a seeded sample) on the page in
    the browser (WASM) and ``server_chars`` of them with recognition on the server; print and return
    the figures."""
    from tqdm import tqdm

    from kanjirec.data.kanjivg import load_kanjivg

    kanjivg = load_kanjivg()
    with page_service(model) as service, chromium() as driver:
        drawable = [c for c in service.recognizer.classes if c in kanjivg]
        rng = np.random.default_rng(seed)
        drawn = [
            drawable[i] for i in sorted(rng.choice(len(drawable), min(chars, len(drawable)), replace=False))
        ]
        page = DrawingPage(driver, service.url)
        if page.ready != "wasm":
            raise BrowserError(f"the page did not start in the browser: {page.status}")
        resources = page.resources()
        misses, hits10 = [], 0
        for char in tqdm(drawn, desc="drawing (WASM)", disable=bool(os.environ.get("CI"))):
            top = [c for c, _ in page.draw_char(char, kanjivg)]
            if top[0] != char:
                misses.append(f"{char}->{top[0]}")
            hits10 += char in top
            page.click("clear")
        wasm_ms = [t["ms"] for t in page.timings() if t["backend"] == "wasm" and t["strokes"]]
        page = DrawingPage(driver, service.url, backend="server")
        for char in tqdm(drawn[:server_chars], desc="drawing (server)", disable=bool(os.environ.get("CI"))):
            page.draw_char(char, kanjivg)
            page.click("clear")
        server_ms = [t["ms"] for t in page.timings() if t["backend"] == "server" and t["strokes"]]
        # What a host that gzips its answers would send (many static hosts do; `kanjirec serve` does not).
        zipped = sum(len(gzip.compress(urllib.request.urlopen(url).read())) for url, _ in resources)
    raw = sum(size for _, size in resources)
    figures = {
        "model": service.recognizer.loaded.name,
        "chars": len(drawn),
        "top1": 1 - len(misses) / len(drawn),
        "misses": misses,
        "top10": hits10 / len(drawn),
        "wasm_ms": wasm_ms,
        "server_ms": server_ms,
        "download_bytes": raw,
        "download_gzip_bytes": zipped,
        "resources": resources,
    }
    print(f"kanjirec bench web: {figures['model']} in headless Chromium ({shutil.which('chromium')})")
    print(f"  drawn from KanjiVG, stroke by stroke: {len(drawn)} characters")
    print(f"  top-1 {figures['top1']:.2%}, top-10 {figures['top10']:.2%} (recognised in the browser)")
    print(f"  read wrong: {' '.join(misses) or 'none'}")
    print(f"  latency per stroke, stroke end -> candidates: WASM {_percentiles(wasm_ms)}")
    print(f"                                        server {_percentiles(server_ms)}")
    print(
        f"  page download: {raw / 2**20:.2f} MiB in {len(resources)} files, as the browser counted them "
        f"({zipped / 2**20:.2f} MiB gzipped)"
    )
    for url, size in sorted(resources, key=lambda r: -r[1]):
        print(f"    {size / 2**10:10.1f} KiB  {url.removeprefix(service.url) or '/'}")
    return figures
