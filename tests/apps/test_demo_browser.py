"""End to end: a real browser draws an MNIST test digit on the demo page and reads the prediction.

Playwright drives Debian's Chromium (``apt-get install -y chromium``; Playwright's own browser download is
not used). The demo server runs in a thread on a free localhost port.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
CANVAS_SCALE = 10  # the page's canvas is 280x280: ten canvas pixels per MNIST pixel

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def demo_url(trained_tensors):
    """The demo app serving the trained_run model as ``serve`` configures it, in a background thread, on a socket
    bound here (a port picked, released and bound again could be taken by anything else on the machine meanwhile)."""
    import uvicorn

    from mobile_lenet.apps import demo

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    app = demo.create_app(trained_tensors, "trained_run", hosts=demo.allowed_hosts("127.0.0.1", port))
    server = uvicorn.Server(demo.server_config(app, "127.0.0.1", port))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "demo server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)
    listening.close()


@pytest.fixture(scope="module")
def page(demo_url):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(demo_url)
        page.wait_for_function("document.querySelectorAll('#engine option').length > 0")
        yield page
        browser.close()


def row_strokes(digit: np.ndarray, threshold: int = 128) -> list[tuple[int, int, int]]:
    """The bright runs of each row of a 28x28 digit as (row, first column, last column)."""
    strokes = []
    for row, values in enumerate(digit >= threshold):
        column = 0
        while column < len(values):
            if values[column]:
                start = column
                while column + 1 < len(values) and values[column + 1]:
                    column += 1
                strokes.append((row, start, column))
            column += 1
    return strokes


def draw_digit(page, digit: np.ndarray) -> None:
    """Redraw the digit on the canvas with the mouse, one stroke per bright run of each row."""
    box = page.locator("#drawing").bounding_box()
    scale = box["width"] / (28 * CANVAS_SCALE)  # CSS pixels per canvas pixel

    def at(row, column):
        return (box["x"] + (column + 0.5) * CANVAS_SCALE * scale, box["y"] + (row + 0.5) * CANVAS_SCALE * scale)

    for row, first, last in row_strokes(digit):
        page.mouse.move(*at(row, first))
        page.mouse.down()
        page.mouse.move(*at(row, last), steps=max(1, last - first))
        page.mouse.up()


def wait_until_answered(page) -> dict:
    """Wait until the page has an answer for exactly what the canvas shows now; returns window.demo."""
    page.wait_for_function("() => !demo.busy && demo.pending === null && demo.lastResult !== null"
                           " && demo.source.image === document.getElementById('drawing').toDataURL('image/png')",
                           timeout=30_000)
    return page.evaluate("() => ({source: demo.source, result: demo.lastResult})")


def test_drawn_digit_is_recognised_in_the_browser(page, mnist_test, trained_tensors, confident_digits, tmp_path):
    """A digit the fixture model reads with p > 0.95 even redrawn on a canvas (see conftest.confident_digits),
    so the answer does not hang on one borderline image."""
    from mobile_lenet.apps.demo import decode_data_url, decode_image, to_network_input
    from mobile_lenet.engines.registry import logits

    index = confident_digits[0]
    digit, label = mnist_test.images[index], int(mnist_test.labels[index])
    page.click("#clear")
    draw_digit(page, digit)
    state = wait_until_answered(page)
    shown = page.inner_text("#prediction").strip()
    page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)

    # The engine, called here directly on the very pixels the page sent, agrees with what the page shows.
    sent = state["source"]
    assert sent["image"].startswith("data:image/png;base64,") and sent["invert"] == "no"
    network_input = to_network_input(decode_image(decode_data_url(sent["image"])), sent["invert"])
    expected = int(logits(trained_tensors, network_input[None], "reference").argmax())  # not the page's torch
    assert shown == str(expected) == str(state["result"]["prediction"])
    assert np.array_equal(np.array(state["result"]["input"]), network_input)
    # Preprocessed MNIST-style, the redrawn digit is recognised as what it is.
    assert expected == label
    # The page shows the probabilities and one activation mosaic per stage.
    assert page.locator("#probabilities .value").first.inner_text().endswith("%")
    assert page.locator("#stages img").count() == 7
    assert all(page.locator("#stages img").nth(i).evaluate("img => img.complete && img.naturalWidth > 0")
               for i in range(7))
    assert page.inner_text("#status") == ""


def test_changing_the_engine_predicts_again(page, trained_tensors):
    engines = page.eval_on_selector_all("#engine option", "options => options.map(o => o.value)")
    microcontrollers = page.evaluate("async () => (await (await fetch('/api/info')).json()).microcontrollers")
    assert engines == ["torch", "reference", "c", *microcontrollers]
    before = page.evaluate("() => demo.requests")
    page.select_option("#engine", "reference")
    page.wait_for_function(f"() => demo.requests > {before} && !demo.busy && demo.pending === null"
                           " && demo.lastResult.engine === 'reference'", timeout=30_000)
    assert page.inner_text("#prediction").strip() == str(page.evaluate("() => demo.lastResult.prediction"))
    page.select_option("#engine", "torch")
    page.wait_for_function("() => !demo.busy && demo.pending === null && demo.lastResult.engine === 'torch'",
                           timeout=30_000)


def test_clear_resets_the_page(page):
    page.click("#clear")
    assert page.inner_text("#prediction").strip() == "–"
    assert page.locator("#stages img").count() == 0


def test_upload_of_a_dark_on_light_picture(page, mnist_test, confident_digits, tmp_path):
    """An uploaded 'photo' (dark digit on white paper, large) is inverted and recognised like the original."""
    from PIL import Image

    index = confident_digits[1]
    digit = mnist_test.images[index]
    photo = tmp_path / "photo.png"
    Image.fromarray(255 - digit).resize((140, 140), Image.BILINEAR).save(photo)
    before = page.evaluate("() => demo.requests")
    page.set_input_files("#upload", str(photo))
    page.wait_for_function(f"() => demo.requests > {before} && !demo.busy && demo.pending === null"
                           " && demo.lastResult !== null", timeout=30_000)
    state = page.evaluate("() => ({source: demo.source, result: demo.lastResult})")
    assert state["source"]["invert"] == "auto"
    assert base64.b64decode(state["source"]["image"].split(",", 1)[1]) == photo.read_bytes()
    assert page.inner_text("#prediction").strip() == str(state["result"]["prediction"])
    assert state["result"]["prediction"] == int(mnist_test.labels[index])


def test_a_simulated_microcontroller_answers_with_its_count_per_layer(page, mnist_test, trained_tensors,
                                                                      confident_digits):
    """Pick cortex-m4f, draw a digit: the firmware in QEMU answers (the reference engine's digit) and the page shows
    its instructions per layer, a row for each layer the firmware marked."""
    from mobile_lenet.apps.simulate import missing_tools
    from mobile_lenet.engines.registry import logits

    if missing_tools("cortex-m4f"):
        pytest.skip(missing_tools("cortex-m4f"))
    page.click("#clear")
    page.select_option("#engine", "cortex-m4f")
    digit = mnist_test.images[confident_digits[2]]
    draw_digit(page, digit)
    state = wait_until_answered(page)
    result = state["result"]
    assert result["engine"] == "cortex-m4f"
    expected = int(logits(trained_tensors, np.array(result["input"], np.uint8)[None], "reference").argmax())
    assert page.inner_text("#prediction").strip() == str(expected) == str(result["prediction"])
    assert page.is_visible("#mcu-panel") and "instructions" in page.inner_text("#mcu-summary")
    mcu = result["microcontroller"]
    rows = page.locator("#mcu-layers tbody tr")
    assert rows.count() == len(mcu["layers"]) + 1 > 10  # each marked layer, and what comes after the last
    first = rows.first.locator("td")
    assert first.nth(1).inner_text() == mcu["layers"][0]["name"]
    assert int(first.nth(2).inner_text().replace(",", "")) == mcu["layers"][0]["count"] > 0
    shown = sum(int(rows.nth(i).locator("td").nth(2).inner_text().replace(",", "")) for i in range(rows.count()))
    assert shown == mcu["whole_image"]
    page.select_option("#engine", "torch")  # back to the default for the other tests; the panel goes away
    page.wait_for_function("() => !demo.busy && demo.pending === null && demo.lastResult.engine === 'torch'",
                           timeout=30_000)
    assert not page.is_visible("#mcu-panel")
