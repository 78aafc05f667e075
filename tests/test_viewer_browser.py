"""The web viewer in a real headless browser: Debian's chromium and chromium-driver, driven by
selenium. The page loads, shows the frame the viewer rendered, and dragging the mouse over it
(viser's orbit controls) moves the camera and changes the frame.

WebGL in headless chromium without a GPU runs on SwiftShader: ``--use-angle=swiftshader
--enable-unsafe-swiftshader``. Skips, saying why, where chromium, chromedriver, selenium or viser
is missing (.ci/run installs them: scripts/install-browser.sh and the test extra).
"""

from __future__ import annotations

import importlib.util
import io
import math
import os
import shutil
import time

import _viewer_scene as scene
import numpy as np
import pytest

from nerfmine import viewer
from nerfmine.cli.common import load_scene


def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def _from_env(name: str) -> str | None:
    """A path from the environment, if it names an existing file (overrides the PATH search)."""
    path = os.environ.get(name)
    return path if path and os.path.isfile(path) else None


CHROMIUM = _from_env("NERFMINE_CHROMIUM") or _find("chromium", "chromium-browser")
CHROMEDRIVER = _from_env("NERFMINE_CHROMEDRIVER") or _find("chromedriver")
_missing = [what for what, ok in (
    ("chromium (apt-get install chromium)", CHROMIUM),
    ("chromedriver (apt-get install chromium-driver)", CHROMEDRIVER),
    ("selenium (pip install selenium)", importlib.util.find_spec("selenium")),
    ("viser (pip install 'nerfmine[view]')", importlib.util.find_spec("viser")),
) if not ok]
pytestmark = pytest.mark.skipif(bool(_missing), reason="browser test needs " + ", ".join(_missing)
                                + " (scripts/install-browser.sh installs the browser)")

WINDOW = (1000, 800)
MAX_RES = 128


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder holding a hand-built model (tests/_viewer_scene.py): an opaque grey block
    off the scene centre, which moves across the frame when the camera orbits."""
    run = tmp_path_factory.mktemp("browser") / "run"
    block = scene.block_scene()
    scene.set_block(block, (0.65, 0.5, 0.55), half=0.18)
    run.mkdir(parents=True)
    block.config.save(run / "config.json")
    block.save(run / "checkpoint.pt")
    return run


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                "--ignore-gpu-blocklist", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except Exception as exc:  # noqa: BLE001 - a browser that cannot start is an environment issue
        pytest.skip(f"chromium did not start under chromedriver: {exc}")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _screenshot(driver) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"))


def _shown_frame_error(shot: np.ndarray, frame: np.ndarray) -> float:
    """Mean absolute difference (0-255) between the screenshot and the viewer's last frame
    stretched over the page (viser draws the background image over the whole canvas), in the
    left-centre of the page: away from the panel (top right), the notifications (top left) and
    the axes gizmo (bottom left)."""
    from PIL import Image

    h, w = shot.shape[:2]
    stretched = np.asarray(Image.fromarray(frame).resize((w, h), Image.BILINEAR)).astype(float)
    box = (slice(int(0.4 * h), int(0.85 * h)), slice(int(0.15 * w), int(0.55 * w)))
    return float(np.abs(shot[box].astype(float) - stretched[box]).mean())


def _wait_still_frame(v: viewer.Viewer, driver, timeout: float = 30.0):
    """Wait until the viewer sent a full-resolution frame and the page shows it; returns
    (screenshot, frame, error)."""
    deadline = time.monotonic() + timeout
    error = math.inf
    shot = frame = None
    while time.monotonic() < deadline:
        time.sleep(0.5)
        states = list(v._states.values())
        frame = v.last_frame
        if frame is None or not states or states[0].long_side != v.max_res:
            continue
        shot = _screenshot(driver)
        error = _shown_frame_error(shot, frame)
        if error < 12.0:
            return shot, frame, error
    raise AssertionError(f"the page did not show the rendered frame within {timeout} s "
                         f"(frames sent {v.frames_sent}, last difference {error:.1f}, "
                         f"errors {v.errors})")


def test_page_shows_frames_and_follows_the_camera(run_dir, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    trained = load_scene(run_dir)
    port = viewer.free_port()
    v = viewer.make_viewer(trained, host="127.0.0.1", port=port, max_res=MAX_RES)
    v.start()
    try:
        browser.get(v.url)
        shot0, frame0, err0 = _wait_still_frame(v, browser)
        # The frame is the field's render, not a blank page: the unit cube shows in it.
        assert (np.abs(frame0.astype(int) - 255).sum(-1) > 30).mean() > 0.03
        key0 = next(iter(v._states.values())).key
        sent = v.frames_sent

        canvas = browser.find_element(By.TAG_NAME, "canvas")
        drag = ActionChains(browser)
        drag.move_to_element_with_offset(canvas, -WINDOW[0] // 4, WINDOW[1] // 8)
        drag.click_and_hold()
        for _ in range(10):
            drag.move_by_offset(25, 6)
            drag.pause(0.05)
        drag.release().perform()

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and next(iter(v._states.values())).key == key0:
            time.sleep(0.2)
        assert next(iter(v._states.values())).key != key0, "dragging did not move the camera"
        shot1, frame1, err1 = _wait_still_frame(v, browser)
        assert v.frames_sent > sent
        assert np.abs(frame1.astype(int) - frame0.astype(int)).mean() > 2.0, \
            "the new camera's frame equals the old one"
        box = (slice(int(0.4 * shot0.shape[0]), int(0.85 * shot0.shape[0])),
               slice(int(0.15 * shot0.shape[1]), int(0.55 * shot0.shape[1])))
        assert np.abs(shot1[box].astype(int) - shot0[box].astype(int)).mean() > 2.0, \
            "the page still shows the old frame"
        assert v.errors == []
    finally:
        v.stop()
        keep = os.environ.get("NERFMINE_VIEWER_SCREENSHOTS")  # a folder to keep them in
        if keep:
            from PIL import Image

            os.makedirs(keep, exist_ok=True)
            for name, image in (("before", locals().get("shot0")),
                                ("after", locals().get("shot1"))):
                if image is not None:
                    Image.fromarray(image).save(os.path.join(keep, f"{name}.png"))
