"""steelseg.report: a self-contained page, checked as text and in a real headless chromium.

The browser test loads the report of a tiny evaluation with network features off and reads
back the marker the page sets after load (how many <img> decoded); any console message
(a script error, a blocked external resource) fails it. Without chromium it is skipped, unless
STEELSEG_REQUIRE_BROWSER=1 (CI) turns the skip into a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from helpers import CHROMIUM_FLAGS, eval_ckpt
from steelseg.report import (
    FN_RGB,
    FP_RGB,
    SCRIPT,
    TP_RGB,
    confusion_matrix_uri,
    overlay,
    render_report,
)

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def tiny_eval(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """steelseg-eval of the tiny checkpoint on its validation images, into a temp folder."""
    out = tmp_path_factory.mktemp("eval")
    result = eval_ckpt(tiny_ckpt, "val", out=out, progress=False)
    return out / "report.html", result


def find_chromium() -> str | None:
    for name in ("/usr/bin/chromium", *CHROMIUM):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture
def chromium() -> str:
    path = find_chromium()
    if path is None:
        if os.environ.get("STEELSEG_REQUIRE_BROWSER") == "1":
            pytest.fail(
                "STEELSEG_REQUIRE_BROWSER=1 but no chromium found (apt-get install chromium)"
            )
        pytest.skip(
            "chromium is not installed (apt-get install chromium); report not browser-tested"
        )
    return path


def load_in_browser(chromium: str, page: Path, profile: Path) -> tuple[str, str]:
    """(DOM after load, browser log) of ``page`` in headless chromium with no network use."""
    cmd = [
        chromium,
        *CHROMIUM_FLAGS,
        "--metrics-recording-only",
        "--safebrowsing-disable-auto-update",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


# ----------------------------------------------------------------------------- in a browser
def test_report_loads_in_chromium_and_shows_images(chromium: str, tiny_eval, tmp_path: Path):
    page, result = tiny_eval
    dom, log = load_in_browser(chromium, page, tmp_path / "profile")
    marker = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert marker, "the page's load handler did not run"
    loaded, total = map(int, marker.groups())
    # threshold curve + Dice histogram + pixel confusion matrix + panels
    expected = 3 + min(50, result["n_images"])
    assert total == expected
    assert loaded == total, f"only {loaded} of {total} images decoded"
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert not console, "console messages:\n" + "\n".join(console)
    assert "Headline metrics" in dom and "Pixel confusion matrix" in dom


def test_the_browser_check_catches_a_broken_page(chromium: str, tmp_path: Path) -> None:
    # the same check on a page with an undecodable picture and a script error must fail
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><body><img src='data:image/png;base64,AAAA'>"
        "<script>undefinedCall()</script><script>" + SCRIPT + "</script></body></html>"
    )
    dom, log = load_in_browser(chromium, page, tmp_path / "profile")
    assert 'data-images-loaded="0/1"' in dom
    assert any(":CONSOLE" in line and "undefinedCall" in line for line in log.splitlines())


# ----------------------------------------------------------------------------- as text
def test_report_is_self_contained(tiny_eval) -> None:
    page, result = tiny_eval
    html = page.read_text(encoding="ascii")  # written as ASCII, whatever the locale
    assert "http://" not in html and "https://" not in html
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in html and "<script src" not in html
    assert "Content-Security-Policy" in html
    for words in (
        "Threshold curve and per-image Dice",
        "Clean vs defective images",
        "worst first",
        "Defects",
        "Segmentation metrics, background included",
        "mIoU (background + classes)",
        "Pixel confusion matrix",
    ):
        assert words in html
    # the per-class table: background and defect, post-processed IoU as in eval.json
    seg = result["metrics"]["postprocessed"]["segmentation"]
    for name in ("background", "defect"):
        iou = seg["classes"][name]["IoU"]
        cell = "n/a" if iou is None else f"{iou:.3f}"
        assert re.search(rf"<td>{name}</td><td class=num>[\d,]+</td>.*?{cell}", html), name
    # every image appears, worst (lowest per-image Dice) first
    dice = [r["postprocessed"]["dice"] for r in result["images"]]
    shown = re.findall(r'id="img-([^"]+)"', html)
    by_id = {r["image_id"]: r["postprocessed"]["dice"] for r in result["images"]}
    assert sorted(shown) == sorted(by_id) and [by_id[i] for i in shown] == sorted(dice)


def test_panels_are_capped(tiny_eval) -> None:
    _, result = tiny_eval
    calls = []

    def load(image_id: str):
        calls.append(image_id)
        z = np.zeros((256, 1600), bool)
        return np.full((256, 1600), 128, np.uint8), z, z

    html = render_report(result, load, max_panels=1)
    assert html.count("<figure class=panel") == 1 and len(calls) == 1
    assert "(1 of" in html
    assert render_report(result, None).count("<figure") == 0


def test_an_eval_json_without_segmentation_metrics_still_renders(tiny_eval) -> None:
    _, result = tiny_eval
    old = {**result, "metrics": {k: dict(v) for k, v in result["metrics"].items()}}
    for variant in old["metrics"].values():
        del variant["segmentation"]
    html = render_report(old, None)
    assert "Headline metrics" in html and "Pixel confusion matrix" not in html


def test_confusion_matrix_picture_of_four_classes() -> None:
    m = np.arange(25).reshape(5, 5) * 10_000
    m[3] = 0  # a class absent from the truth: its row has no percentages
    uri = confusion_matrix_uri({"a": m, "b": m.T}, ["background", "1", "2", "3", "4"])
    assert uri.startswith("data:image/png;base64,")


def test_overlay_colours_hits_false_alarms_and_misses() -> None:
    image = np.full((40, 60), 100, np.uint8)
    pred, target = np.zeros((40, 60), bool), np.zeros((40, 60), bool)
    pred[5:15, 5:15] = target[5:15, 5:15] = True  # found
    pred[5:15, 30:40] = True  # false alarm
    target[25:35, 45:55] = True  # missed
    out = overlay(image, pred, target)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    for (y, x), rgb in (((10, 10), TP_RGB), ((10, 35), FP_RGB), ((30, 50), FN_RGB)):
        pixel = out[y, x].astype(int)
        assert np.argmax(pixel) == int(np.argmax(rgb)), (y, x, pixel)  # tinted toward its colour
        assert pixel.tolist() != [100, 100, 100]
    assert out[1, 1].tolist() == [100, 100, 100]  # untouched steel stays grey
    small = overlay(image, pred, np.zeros_like(target), width=30)
    assert small.shape == (20, 30, 3)
