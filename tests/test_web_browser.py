"""``artshield serve`` in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

One artist's session on the demo model: drop an odd-sized RGBA image, protect it with 2 steps, download the
PNG and check its size, alpha and budget; a file that is not an image shows an error on the page; a running
job is cancelled. Screenshots at laptop (1280×800) and phone (390×844) width are written under
``$ARTSHIELD_SCREENSHOTS`` (default: ``<tmp>/artshield-web-screenshots``) and their paths printed.

Skips, saying why, when chromium, Playwright or the web extra is missing.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("starlette", reason="the web extra (starlette) is not installed")
pytest.importorskip("uvicorn", reason="the web extra (uvicorn) is not installed")
pytest.importorskip("multipart", reason="the web extra (python-multipart) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no `chromium` on PATH (install Debian's chromium package, as .ci/run does)", allow_module_level=True)

pytestmark = pytest.mark.slow
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]
WIDTH, HEIGHT = 301, 203  # odd on both sides: not a multiple of the model's 8 or 32


def artwork() -> Image.Image:
    """A small RGBA "painting": sky gradient, sun, hills, and a transparent border fading in."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    sky = np.stack([90 + 80 * y / HEIGHT, 140 + 60 * y / HEIGHT, 230 - 40 * y / HEIGHT], -1)
    image = Image.fromarray(sky.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((200, 30, 260, 90), fill=(250, 200, 80))
    draw.polygon([(0, 150), (80, 100), (170, 140), (240, 110), (301, 150), (301, 203), (0, 203)], fill=(60, 120, 70))
    draw.polygon([(0, 180), (120, 140), (301, 185), (301, 203), (0, 203)], fill=(40, 90, 60))
    rgba = np.dstack([np.asarray(image), np.minimum(255, 40 + np.minimum(x, WIDTH - 1 - x) * 12).astype(np.uint8)])
    return Image.fromarray(rgba, "RGBA")


@pytest.fixture(scope="module")
def screenshots() -> Path:
    folder = Path(os.environ.get("ARTSHIELD_SCREENSHOTS") or Path(tempfile.gettempdir()) / "artshield-web-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    import uvicorn

    from artshield.web.app import create_app
    from artshield.web.jobs import JobStore
    from artshield.web.serve import LOOPBACK_NAMES, bind, model_choices

    store = JobStore(tmp_path_factory.mktemp("web"), model_choices(["demo"]), device="cpu", dtype="fp32")
    app = create_app(store, allowed_hosts=LOOPBACK_NAMES)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/", store
    store.close()
    server.should_exit = True
    thread.join(30)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    outside: list[str] = []
    page.on("request", lambda request: None if request.url.startswith(("http://127.0.0.1", "data:", "blob:")) else outside.append(request.url))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not outside, f"the page asked for something outside the server: {outside}"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def add_file(page, name: str, data: bytes, mime: str = "image/png") -> None:
    page.set_input_files("#file-input", files=[{"name": name, "mimeType": mime, "buffer": data}])


def set_steps(page, steps: int) -> None:
    if not page.is_visible("#steps"):
        page.click("details.advanced summary")
    page.fill("#steps", str(steps))


def test_protect_download_and_look(live_server, page, screenshots, tmp_path):
    url, _ = live_server
    page.goto(url)
    page.wait_for_selector("#strengths input[value=medium]:checked")
    assert page.is_visible("#demo-notice")  # the demo model is never presented as real protection
    assert "not real protection" in page.inner_text("#demo-notice")

    original = artwork()
    add_file(page, "My painting.png", png_bytes(original))
    page.wait_for_selector("li.upload >> text=301 × 203")
    assert "transparency kept" in page.inner_text("li.upload")
    set_steps(page, 2)
    page.click("#protect")
    job = page.wait_for_selector(".job[data-state=done]", timeout=180_000)
    assert "1 image protected" in job.inner_text()

    with page.expect_download() as download_info:
        page.click(".result a.download")
    download = download_info.value
    assert download.suggested_filename == "My_painting.protected.png"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    protected = Image.open(saved)
    assert protected.size == (WIDTH, HEIGHT) and protected.mode == "RGBA"
    before, after = np.asarray(original).astype(int), np.asarray(protected).astype(int)
    assert np.array_equal(before[..., 3], after[..., 3])  # alpha exactly kept
    change = np.abs(before[..., :3] - after[..., :3]).max()
    assert 0 < change <= 8  # medium strength: 8/255
    metadata = json.loads(protected.info["artshield"])
    assert metadata["settings"]["engine"]["steps"] == 2 and "demo_model_warning" in metadata

    page.click(".result figure.after img", position={"x": 150, "y": 40})
    page.wait_for_selector(".crops:not([hidden]) figure:nth-child(3) img")
    # wait_for_load_state("networkidle") returns at once when the page was idle before the click, so it does not
    # wait for the crops; wait for the images themselves (a failed load ends `complete` with width 0 and fails below).
    loaded = "imgs => imgs.map((i) => i.complete ? i.naturalWidth : 0)"
    images = ".crops img, .compare img"
    page.wait_for_function(
        f"() => Array.from(document.querySelectorAll({json.dumps(images)})).every((i) => i.complete)", timeout=60_000
    )
    sizes = page.eval_on_selector_all(images, loaded)
    assert len(sizes) == 6 and all(sizes), sizes  # before / after / ×10 previews and their 1:1 crops all loaded
    laptop = screenshots / "web-laptop-1280x800.png"
    page.screenshot(path=str(laptop), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    phone = screenshots / "web-phone-390x844.png"
    page.screenshot(path=str(phone), full_page=True)
    print(f"\nscreenshots: {laptop} {phone}")
    # Nothing is wider than a phone's screen (no sideways scrolling).
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_a_file_that_is_not_an_image_shows_an_error(live_server, page):
    url, _ = live_server
    page.goto(url)
    page.wait_for_selector("#strengths input")
    add_file(page, "notes.txt", b"not a picture\n", "text/plain")
    error = page.wait_for_selector("li.upload-error")
    assert "notes.txt" in error.inner_text() and "not an image" in error.inner_text()
    assert page.is_disabled("#protect")


def test_cancel_a_running_job(live_server, page):
    url, store = live_server
    page.goto(url)
    page.wait_for_selector("#strengths input")
    add_file(page, "long.png", png_bytes(artwork()))
    page.wait_for_selector("li.upload >> text=301 × 203")
    set_steps(page, 5000)
    page.click("#protect")
    page.wait_for_selector(".job[data-state=running] .job-progress >> text=/step [1-9]/", timeout=120_000)
    assert "left" in page.inner_text(".job[data-state=running] .job-progress")
    page.click(".job[data-state=running] button.cancel")
    job = page.wait_for_selector(".job[data-state=cancelled]", timeout=60_000)
    assert "nothing was kept" in job.inner_text()
    assert job.query_selector("a.download") is None
    job_id = job.get_attribute("data-job")
    assert not list((store.jobs[job_id].folder / "outputs").glob("*.png"))
