"""steelseg-serve's review page (GET /, src/steelseg/serve_page.html) in a real headless chromium.

The app (steelseg.serve.make_app, no Ray) runs under uvicorn in a thread on a free localhost
port; chromium is driven over the DevTools protocol (CDP) through a websocket: the test picks
files in the page's file input, reads the canvas back, moves the slider, presses the buttons
with the keyboard and takes a screenshot. What the page draws is checked against the tiny
model's own probabilities, computed here. Without chromium it is skipped, unless
STEELSEG_REQUIRE_BROWSER=1 (CI) turns the skip into a failure, as tests/test_report.py does.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")

from fastapi.testclient import TestClient  # noqa: E402

from helpers import CHROMIUM_FLAGS  # noqa: E402
from steelseg.draw import CLASS_RGB, TINT  # noqa: E402
from steelseg.serve import ServeOptions, Service, make_app, page_html  # noqa: E402

SHAPE = (64, 320)
RED = (230, 57, 70)  # the page's own colour of a binary model's class


def strip(seed: int, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """A grey image with a bright scratch, so that a tiny model finds something."""
    rng = np.random.default_rng(seed)
    img = rng.normal(110, 12, shape).clip(0, 255).astype(np.uint8)
    img[shape[0] // 3 : shape[0] // 3 + 6, 40:200] = 230
    return img


def js_round(x: float) -> int:
    return math.floor(x + 0.5)


def quantised(service: Service, img: np.ndarray) -> np.ndarray:
    """The model's probabilities as the page gets them: round(p * 255), uint8 (C, H, W)."""
    prob = service.predictor.predict_proba(img)
    prob = prob[None] if prob.ndim == 2 else prob
    return np.rint(np.clip(prob, 0, 1) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------- the server
@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` under uvicorn in a thread on a free localhost port; its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def service(tiny_ckpt: Path) -> Service:
    from steelseg.deploy import load_predictor

    return Service(load_predictor(tiny_ckpt, "torch", "fp32"))


# ----------------------------------------------------------------------------- the browser
def find_chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless chromium page driven over the DevTools protocol.

    Args:
        chromium: The browser's executable.
        profile: An empty folder for its profile (and its log).
    """

    def __init__(self, chromium: str, profile: Path) -> None:
        from websockets.sync.client import connect

        profile.mkdir(parents=True, exist_ok=True)
        cmd = [
            chromium,
            *CHROMIUM_FLAGS,
            "--force-color-profile=srgb",  # screenshot pixels as the canvas holds them
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        self.log = open(profile / "chromium.log", "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"chromium did not start; see {profile / 'chromium.log'}")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        pages = []
        while not pages:  # the first page (about:blank) may lag the port by a moment
            assert time.monotonic() < deadline, "chromium opened no page"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t["type"] == "page"]
        self.stack = ExitStack()  # closes the websocket
        self.ws = self.stack.enter_context(
            connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        )
        self.next_id, self.events = 0, []
        for domain in ("Page", "Runtime", "Log", "DOM"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=1600,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )

    def send(self, method: str, timeout: float = 60, **params: Any) -> dict:
        """The result of one CDP command; the events that arrive meanwhile are kept."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 60) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while not (value := self.js(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.05)
        return value

    def open(self, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", url=url)
        self.wait("document.readyState === 'complete' && !!document.querySelector('#files')")

    def pick(self, *files: Path) -> None:
        """Choose ``files`` in the page's file input, as a person does in the file dialog."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector="#files")["nodeId"]
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(f) for f in files])

    def press_enter_on(self, selector: str) -> None:
        """Focus an element and press Enter on the keyboard."""
        self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        key = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}
        self.send("Input.dispatchKeyEvent", type="keyDown", text="\r", **key)
        self.send("Input.dispatchKeyEvent", type="keyUp", **key)

    def canvas(self, index: int) -> np.ndarray:
        """The pixels of the ``index``-th card's canvas, RGB uint8 (H, W, 3)."""
        url = self.js(f"document.querySelectorAll('.card canvas')[{index}].toDataURL()")
        return png_rgb(url.split(",", 1)[1])

    def screenshot(self) -> np.ndarray:
        """The whole page as RGB uint8 (H, W, 3)."""
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return png_rgb(shot["data"])

    def problems(self) -> list[str]:
        """Script errors and console errors or warnings seen since the last :meth:`open`."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                out.append(json.dumps(p["exceptionDetails"])[:500])
            elif e.get("method") == "Runtime.consoleAPICalled" and p["type"] in (
                "error",
                "warning",
            ):
                out.append(json.dumps(p["args"])[:500])
            elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] in (
                "error",
                "warning",
            ):
                out.append(p["entry"]["text"][:500])
        return out

    def close(self) -> None:
        if hasattr(self, "stack"):
            self.stack.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def png_rgb(b64: str) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    path = find_chromium()
    if path is None:
        if os.environ.get("STEELSEG_REQUIRE_BROWSER") == "1":
            pytest.fail(
                "STEELSEG_REQUIRE_BROWSER=1 but no chromium found (apt-get install chromium)"
            )
        pytest.skip("chromium is not installed (apt-get install chromium); page not browser-tested")
    b = Browser(path, tmp_path_factory.mktemp("chromium"))
    yield b
    b.close()


# ----------------------------------------------------------------------------- checks
def tinted(picture: np.ndarray) -> np.ndarray:
    """Where a picture is not grey: the pixels the page tinted or outlined, bool (H, W)."""
    r, g, b = picture[..., 0], picture[..., 1], picture[..., 2]
    return (r != g) | (g != b)


def interior(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` whose 4 neighbours are in it too (not on the image's edge)."""
    m, inner = mask, np.zeros_like(mask)
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return inner


def check_overlay(picture: np.ndarray, grey: np.ndarray, mask: np.ndarray, rgb: tuple) -> None:
    """The page's canvas shows ``grey`` with exactly ``mask`` tinted (inside) and outlined
    (its edge) in ``rgb``."""
    assert np.array_equal(tinted(picture), mask), (
        f"{int(tinted(picture).sum())} pixels tinted, the mask has {int(mask.sum())}"
    )
    assert np.array_equal(picture[~mask][:, 0], grey[~mask]), "the grey image is not shown as is"
    inner = interior(mask)
    expected = np.rint((1 - TINT) * grey[inner][:, None] + TINT * np.array(rgb)).astype(int)
    assert np.abs(picture[inner].astype(int) - expected).max() <= 1
    assert (picture[mask & ~inner] == rgb).all(), "outlines are not in the class's colour"


def areas(browser: Browser, card: int) -> list[int]:
    return browser.js(
        f"[...document.querySelectorAll('.card')[{card}].querySelectorAll('td.area')]"
        ".map(td => Number(td.dataset.area))"
    )


def redraw(browser: Browser, action: str) -> str:
    """Run the JavaScript ``action`` and wait for the page's next drawing; what it drew
    (``model``: the model's thresholds, ``server``: the server's masks, else the threshold)."""
    before = browser.js("Number(document.body.dataset.renders || 0)")
    browser.js(action)
    browser.wait(f"Number(document.body.dataset.renders || 0) > {before}")
    return browser.js("document.body.dataset.rendered")


def set_slider(browser: Browser, value: float) -> None:
    drew = redraw(
        browser,
        f"(() => {{ const s = document.querySelector('#threshold'); s.value = '{value}';"
        "s.dispatchEvent(new Event('input', {bubbles: true})); })()",
    )
    assert drew == f"{value:.2f}"


# ----------------------------------------------------------------------------- the tests
def test_the_page_is_self_contained(service: Service) -> None:
    html = page_html()
    page = TestClient(make_app(service, ServeOptions(model="unused"))).get("/")
    assert page.status_code == 200 and page.text == html
    assert "__STEELSEG_DRAW__" not in html and f'"tint": {TINT}' in html  # steelseg.draw's
    assert "http://" not in html and "https://" not in html  # no CDN, no external request
    assert "<script src" not in html and "@import" not in html
    assert re.findall(r'<link[^>]*href="([^"]*)"', html) == ["data:,"]  # the empty favicon
    assert "Content-Security-Policy" in html and "connect-src 'self'" in html


def test_predict_threshold_toggle_and_review(
    browser: Browser, service: Service, tmp_path: Path
) -> None:
    review = tmp_path / "review"
    app = make_app(service, ServeOptions(model="unused", review_dir=str(review)))
    png, tiff = strip(3), strip(4)
    cv2.imwrite(str(tmp_path / "line-3.png"), png)
    cv2.imwrite(str(tmp_path / "line-4.tif"), tiff)  # no browser shows TIFF: the server's picture
    with serving(app) as url:
        browser.open(url + "/")
        browser.pick(tmp_path / "line-3.png", tmp_path / "line-4.tif")
        browser.wait("document.querySelectorAll('.card[data-state=done]').length === 2")
        assert browser.js("document.querySelector('#threshold').value") == "0.5"

        # the server's threshold: each card shows its image with q >= 128 tinted red
        for card, img in enumerate((png, tiff)):
            mask = quantised(service, img)[0] >= js_round(0.5 * 255)
            assert 0 < mask.sum() < mask.size, "the tiny model's mask must be partial"
            check_overlay(browser.canvas(card), img, mask, RED)
            assert areas(browser, card) == [int(mask.sum())]
        assert "the server's" in browser.js("document.querySelectorAll('.timings')[1].textContent")

        # the slider re-thresholds in the browser, with no new request
        predicts = service_requests(app)
        q = quantised(service, png)[0]
        for t in (0.3, 0.7):
            mask = q >= js_round(t * 255)
            set_slider(browser, t)
            check_overlay(browser.canvas(0), png, mask, RED)
            assert areas(browser, 0) == [int(mask.sum())]
        assert (q >= js_round(0.3 * 255)).sum() > (q >= js_round(0.7 * 255)).sum()
        assert service_requests(app) == predicts

        # the class toggle hides the tint but keeps the area
        toggle = "document.querySelector('#legend input[data-class=\"0\"]').click()"
        assert redraw(browser, toggle) == "0.70"
        assert not tinted(browser.canvas(0)).any()
        assert areas(browser, 0) == [int((q >= js_round(0.7 * 255)).sum())]
        redraw(browser, toggle)

        # "Server's answer" shows the server's own mask, whatever the slider says
        server_view = "document.querySelector('#server-view').click()"
        assert redraw(browser, server_view) == "server"
        check_overlay(browser.canvas(0), png, service.predictor.predict(png), RED)
        redraw(browser, server_view)
        assert redraw(browser, "document.querySelector('#reset').click()") == "model"
        check_overlay(browser.canvas(0), png, q >= js_round(0.5 * 255), RED)

        # the screenshot shows the class colour where the mask is, scaled to the window
        shot = browser.screenshot()
        box = browser.js(
            "(() => { const r = document.querySelector('.card canvas').getBoundingClientRect();"
            "return [r.left + scrollX, r.top + scrollY, r.width, r.height]; })()"
        )
        assert box[2] > 1500, "the canvas does not fill a 1600 px window"
        check_screenshot(shot, box, q >= js_round(0.5 * 255))

        # Wrong by keyboard (Enter), Missed by a click with a note: saved in the review folder
        browser.press_enter_on(".card:nth-of-type(1) button.wrong")
        browser.wait("document.querySelectorAll('.card')[0].dataset.review === 'wrong'")
        browser.js("document.querySelectorAll('.card .note')[1].value = 'edge crack'")
        browser.js("document.querySelectorAll('.card button.missed')[1].click()")
        browser.wait("document.querySelectorAll('.card')[1].dataset.review === 'missed'")
        said = browser.js("[...document.querySelectorAll('.card .saved')].map(s => s.textContent)")
        problems = browser.problems()
    saved = [re.search(r"images/\S+\.png", s).group(0) for s in said]
    for path, img in zip(saved, (png, tiff)):
        assert np.array_equal(cv2.imread(str(review / path), cv2.IMREAD_GRAYSCALE), img)
        assert (review / path.replace("images/", "masks/")).is_file()
    rows = (review / "verdicts.csv").read_text().splitlines()
    assert ",wrong," in rows[1] and ",missed," in rows[2] and rows[2].endswith("edge crack")
    assert not problems, "browser errors:\n" + "\n".join(problems)


def service_requests(app: Any) -> float:
    """How many /predict requests the app has answered (its Prometheus counter)."""
    metric = app.state.metrics.requests
    return sum(
        s.value
        for m in metric.collect()
        for s in m.samples
        if s.name.endswith("_total") and s.labels.get("endpoint") == "/predict"
    )


def check_screenshot(shot: np.ndarray, box: list[float], mask: np.ndarray) -> None:
    """The outline colour is in the screenshot, and only over the mask (scaled to the box)."""
    left, top, width, height = box
    x0, y0 = math.ceil(left), math.ceil(top)
    view = shot[y0 : int(top + height), x0 : int(left + width)]
    red = (view == RED).all(-1)
    assert red.sum() > 100, "no outline colour in the screenshot"
    ys, xs = np.nonzero(red)
    h, w = mask.shape
    # the mask grown by a pixel: scaling may shift an edge by one
    near = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    rows = np.clip(((ys + y0 - top) * h / height).astype(int), 0, h - 1)
    cols = np.clip(((xs + x0 - left) * w / width).astype(int), 0, w - 1)
    hits = near[rows, cols]
    assert hits.mean() > 0.99, f"{(~hits).sum()} outline pixels away from the mask"


def test_token_and_errors(browser: Browser, service: Service, tmp_path: Path) -> None:
    app = make_app(service, ServeOptions(model="unused", token="s3cret"))
    cv2.imwrite(str(tmp_path / "a.png"), strip(5))
    (tmp_path / "notes.png").write_bytes(b"this is not an image" * 20)
    with serving(app) as url:
        browser.open(url + "/")
        browser.js("localStorage.clear(); document.querySelector('#token').value = ''")
        browser.pick(tmp_path / "a.png")
        status = browser.wait(
            "document.querySelector('.card[data-state=error] .status')?.textContent"
        )
        assert "401 unauthorized" in status and "token" in status
        browser.js("document.querySelector('.card button.wrong').click()")
        saved = browser.wait(
            "document.querySelector('.card')?.dataset.review === 'error' &&"
            "document.querySelector('.card .saved').textContent"
        )
        assert saved.startswith("Not saved: 401 unauthorized")

        browser.js("document.querySelector('#token').focus()")
        browser.send("Input.insertText", text="s3cret")  # typed: the page stores it
        browser.pick(tmp_path / "notes.png")
        status = browser.wait(
            "document.querySelectorAll('.card')[1]?.dataset.state === 'error' &&"
            "document.querySelectorAll('.card .status')[1].textContent"
        )
        assert "415 not_image" in status
        browser.pick(tmp_path / "a.png")
        browser.wait("document.querySelectorAll('.card')[2]?.dataset.state === 'done'")

        browser.open(url + "/")  # the token stays in the browser
        assert browser.js("document.querySelector('#token').value") == "s3cret"


def test_a_four_class_model(browser: Browser, tiny_ckpt_4gate: Path, tmp_path: Path) -> None:
    from steelseg.deploy import load_predictor

    service = Service(load_predictor(tiny_ckpt_4gate, "torch", "fp32"))
    img = strip(6, shape=(256, 320))
    cv2.imwrite(str(tmp_path / "s.bmp"), img)
    with serving(make_app(service, ServeOptions(model="unused"))) as url:
        browser.open(url + "/")
        browser.pick(tmp_path / "s.bmp")
        browser.wait("document.querySelector('.card')?.dataset.state === 'done'")
        set_slider(browser, 0.6)
        picture = browser.canvas(0)
        legend = browser.js("[...document.querySelectorAll('#legend input')].length")
        problems = browser.problems()
    q = quantised(service, img).astype(int)
    shown = q >= js_round(0.6 * 255)
    ids = np.where(shown.any(0), np.where(shown, q, -1).argmax(0) + 1, 0)  # as class_map
    assert legend == 4 and len(np.unique(ids)) >= 3, "the check needs several classes shown"
    assert np.array_equal(tinted(picture), ids > 0)
    for c, rgb in CLASS_RGB.items():
        inner = interior(ids == c)
        expected = np.rint((1 - TINT) * img[inner][:, None] + TINT * np.array(rgb))
        assert np.abs(picture[inner] - expected).max() <= 1, f"class {c}'s tint"
    assert not problems, "browser errors:\n" + "\n".join(problems)
