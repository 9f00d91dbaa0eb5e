"""The demo's HTTP API through FastAPI's TestClient: answers, bad input, and the server carrying on."""

from __future__ import annotations

import base64
import io
import warnings

import numpy as np
import pytest
from PIL import Image

with warnings.catch_warnings():
    # Starlette suggests another HTTP client package for its TestClient; httpx works and is what we have.
    warnings.filterwarnings("ignore", message=".*httpx.*deprecated")
    from fastapi.testclient import TestClient

from mobile_lenet.apps import demo
from mobile_lenet.codegen.mcu_firmware import TARGETS
from mobile_lenet.errors import UserError


@pytest.fixture(scope="module")
def client(trained_tensors):
    return TestClient(demo.create_app(trained_tensors, "trained_run"))


def png_bytes(gray: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(gray: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(gray)).decode()


def canvas_like(digit: np.ndarray) -> np.ndarray:
    """The digit as the page's 280x280 canvas would hold it: ten times larger, white on black."""
    return np.asarray(Image.fromarray(digit).resize((280, 280), Image.NEAREST))


def assert_error(response, status: int, words: str) -> None:
    assert response.status_code == status, response.text[:300]
    assert words in response.json()["error"]


def test_page_and_static_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas id=\"drawing\"" in page.text
    assert client.get("/static/demo.js").status_code == 200
    assert client.get("/static/demo.css").status_code == 200


def test_info_lists_the_engines_of_a_float_model(client):
    info = client.get("/api/info").json()
    # the host's engines, then the simulated microcontrollers this machine can run (tests/apps/test_demo_mcu.py)
    assert info["engines"] == ["torch", "reference", "c", *info["microcontrollers"]]
    assert set(info["microcontrollers"]) | set(info["unavailable_microcontrollers"]) == set(TARGETS)
    assert info["stages"] == ["stem", "B1", "B2", "B3", "B4", "B5", "B6"]


def reference_probabilities_of(trained_tensors, image: np.ndarray) -> np.ndarray:
    """The NumPy reference engine's probabilities: an oracle independent of the demo's default torch engine."""
    from mobile_lenet.engines.reference import reference_probabilities

    return reference_probabilities(trained_tensors, np.asarray(image, np.uint8)[None])[0]


def test_pixels_of_an_mnist_digit_give_the_engine_prediction(client, mnist_test, trained_tensors, confident_digits):
    index = confident_digits[0]
    digit = mnist_test.images[index]
    answer = client.post("/api/predict", json={"pixels": digit.tolist()}).json()
    expected = reference_probabilities_of(trained_tensors, digit)
    assert answer["prediction"] == int(expected.argmax()) == int(mnist_test.labels[index])
    np.testing.assert_allclose(answer["probabilities"], expected, rtol=0, atol=1e-5)
    assert answer["input"] == digit.tolist()  # a 28x28 picture is taken as it is
    assert answer["blank"] is False and answer["engine"] == "torch"
    shapes = [stage["shape"] for stage in answer["stages"]]
    assert shapes == [[28, 28, 8]] * 3 + [[14, 14, 16]] * 2 + [[7, 7, 24]] * 2
    for stage in answer["stages"]:
        mosaic = Image.open(io.BytesIO(base64.b64decode(stage["image"].split(",", 1)[1])))
        assert mosaic.format == "PNG"


def test_a_canvas_drawing_is_preprocessed_mnist_style(client, mnist_test, trained_tensors, confident_digits):
    from mobile_lenet.model.images import mnist_style

    index = confident_digits[1]
    canvas = canvas_like(mnist_test.images[index])
    answer = client.post("/api/predict", json={"image": data_url(canvas), "invert": "no"}).json()
    assert answer["input"] == mnist_style(canvas).tolist()
    expected = reference_probabilities_of(trained_tensors, answer["input"])
    assert answer["prediction"] == int(expected.argmax()) == int(mnist_test.labels[index])
    np.testing.assert_allclose(answer["probabilities"], expected, rtol=0, atol=1e-5)


def test_an_image_file_as_body_and_a_dark_on_light_photo(client, mnist_test, confident_digits):
    index = confident_digits[2]
    canvas = canvas_like(mnist_test.images[index])
    photo = 255 - canvas  # black ink on white paper: inverted automatically, then read like the canvas
    response = client.post("/api/predict", content=png_bytes(photo), headers={"Content-Type": "image/png"})
    assert response.status_code == 200
    from mobile_lenet.model.images import mnist_style

    assert response.json()["input"] == mnist_style(canvas).tolist()
    assert response.json()["prediction"] == int(mnist_test.labels[index])


@pytest.mark.parametrize("how", ["json", "query"])
def test_each_invert_option_does_what_it_says(client, mnist_test, how):
    """yes: always invert; no: never; auto: only a dark-on-light picture (28x28 pictures are taken as they are)."""
    digit = mnist_test.images[3]  # white on black, as in MNIST
    paper = 255 - digit  # dark on light

    def network_input(picture, invert):
        if how == "json":
            response = client.post("/api/predict", json={"pixels": picture.tolist(), "invert": invert})
        else:
            response = client.post(f"/api/predict?invert={invert}", content=png_bytes(picture),
                                   headers={"Content-Type": "image/png"})
        assert response.status_code == 200, response.text
        return np.array(response.json()["input"], np.uint8)

    np.testing.assert_array_equal(network_input(digit, "yes"), paper)
    np.testing.assert_array_equal(network_input(paper, "yes"), digit)
    np.testing.assert_array_equal(network_input(digit, "no"), digit)
    np.testing.assert_array_equal(network_input(paper, "no"), paper)
    np.testing.assert_array_equal(network_input(digit, "auto"), digit)
    np.testing.assert_array_equal(network_input(paper, "auto"), digit)


def test_a_transparent_canvas_counts_as_black_background(client, mnist_test):
    canvas = canvas_like(mnist_test.images[0])
    rgba = np.zeros(canvas.shape + (4,), np.uint8)
    rgba[..., :3], rgba[..., 3] = 255, canvas  # white ink, transparent elsewhere
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    response = client.post("/api/predict", content=buffer.getvalue(), headers={"Content-Type": "image/png"})
    assert response.json()["input"] == client.post(
        "/api/predict", json={"image": data_url(canvas), "invert": "no"}).json()["input"]


def test_an_empty_canvas_is_blank(client, trained_tensors):
    answer = client.post("/api/predict", json={"pixels": [[0] * 280] * 280}).json()
    assert answer["blank"] is True and answer["input"] == [[0] * 28] * 28
    # still the model's answer for an all-black input, not a made-up one
    expected = reference_probabilities_of(trained_tensors, np.zeros((28, 28), np.uint8))
    np.testing.assert_allclose(answer["probabilities"], expected, rtol=0, atol=1e-5)
    assert answer["prediction"] == int(expected.argmax())


@pytest.mark.parametrize("engine", ["reference", "c"])
def test_other_engines_agree_with_torch(client, mnist_test, engine):
    digit = mnist_test.images[1].tolist()
    torch_answer = client.post("/api/predict", json={"pixels": digit}).json()
    other = client.post("/api/predict", json={"pixels": digit, "engine": engine})
    assert other.status_code == 200, other.text
    assert other.json()["engine"] == engine
    assert other.json()["prediction"] == torch_answer["prediction"]
    assert np.allclose(other.json()["probabilities"], torch_answer["probabilities"], atol=1e-4)


BAD_REQUESTS = [
    # (what, body, content type, status, words in the message)
    ("empty body", b"", "application/json", 400, "empty request body"),
    ("empty image body", b"", "image/png", 400, "empty request body"),
    ("text posing as a PNG", b"hello, not a picture", "image/png", 400, "not a readable image"),
    ("broken JSON", b'{"pixels": [[1, 2]', "application/json", 400, "not valid JSON"),
    ("JSON array", b"[1, 2, 3]", "application/json", 400, "must be an object"),
    ("neither image nor pixels", b'{"engine": "torch"}', "application/json", 400, "exactly one of"),
    ("data URL of text", b'{"image": "data:image/png;base64,aGVsbG8="}', "application/json", 400,
     "not a readable image"),
    ("not base64", b'{"image": "data:image/png;base64,@@@@"}', "application/json", 400, "not valid base64"),
    ("image not a string", b'{"image": 42}', "application/json", 400, "data URL string"),
    ("ragged pixels", b'{"pixels": [[1, 2], [3]]}', "application/json", 400, "same, non-zero length"),
    ("pixels out of range", b'{"pixels": [[1, 300]]}', "application/json", 400, "from 0 to 255"),
    ("pixels not numbers", b'{"pixels": [["a", "b"]]}', "application/json", 400, "numbers only"),
    ("unknown engine", b'{"pixels": [[1]], "engine": "tpu"}', "application/json", 400, "unknown engine"),
    ("bad invert", b'{"pixels": [[1]], "invert": "maybe"}', "application/json", 400, "invert"),
    ("plain text", b"seven", "text/plain", 415, "unsupported Content-Type"),
]


@pytest.mark.parametrize("what,body,content_type,status,words", BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS])
def test_bad_requests_get_a_clear_4xx_and_the_server_carries_on(client, mnist_test, what, body, content_type,
                                                                 status, words):
    assert_error(client.post("/api/predict", content=body, headers={"Content-Type": content_type}), status, words)
    assert client.post("/api/predict", json={"pixels": mnist_test.images[0].tolist()}).status_code == 200


def test_huge_body_is_refused_413(client, mnist_test):
    huge = b"x" * (demo.MAX_BODY_BYTES + 1)
    assert_error(client.post("/api/predict", content=huge, headers={"Content-Type": "image/png"}), 413, "too large")

    def chunks():  # no Content-Length: the limit holds while streaming
        for _ in range(demo.MAX_BODY_BYTES // 65536 + 2):
            yield b"x" * 65536

    assert_error(client.post("/api/predict", content=chunks(), headers={"Content-Type": "image/png"}), 413,
                 "too large")
    assert client.post("/api/predict", json={"pixels": mnist_test.images[0].tolist()}).status_code == 200


def test_huge_image_dimensions_are_refused_before_decoding(client):
    # A small PNG file that would decode into 5000x5000 pixels.
    big = png_bytes(np.zeros((5000, 5000), np.uint8))
    assert len(big) < demo.MAX_BODY_BYTES
    assert_error(client.post("/api/predict", content=big, headers={"Content-Type": "image/png"}), 413, "at most")
    too_many_rows = {"pixels": [[0]] * (demo.MAX_PIXEL_ROWS + 1)}
    assert_error(client.post("/api/predict", json=too_many_rows), 413, "at most")


def test_unknown_paths_and_methods(client):
    assert client.get("/api/nothing").status_code == 404
    assert client.get("/api/predict").status_code == 405


def test_no_model_and_no_default_run_is_a_clear_user_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="mobile-lenet pipeline"):
        demo.resolve_model(None)
    (tmp_path / "runs" / "main").mkdir(parents=True)
    (tmp_path / "runs" / "main" / "best.pt").write_bytes(b"")
    assert demo.resolve_model(None) == demo.DEFAULT_MODEL
    assert str(demo.resolve_model("elsewhere")) == "elsewhere"


def test_cli_demo_without_a_model_says_what_to_pass(tmp_path, monkeypatch, capsys):
    from mobile_lenet.apps.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--model" in error and "mobile-lenet pipeline" in error


def test_cli_demo_refuses_a_port_in_use(trained_run, monkeypatch, capsys):
    import socket

    from mobile_lenet.apps.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["demo", "--model", str(trained_run), "--port", str(port)]) == 2
    assert "choose another --port" in capsys.readouterr().err


def test_the_demo_listens_on_this_machine_only_by_default(monkeypatch):
    """The parser's default --host read back, and what `mobile-lenet demo` hands to the server: a loopback
    address (ipaddress' own test), so the demo is not reachable from other machines unless asked."""
    import ipaddress
    import inspect

    from mobile_lenet.apps import cli

    host = cli.build_parser().parse_args(["demo"]).host
    assert ipaddress.ip_address(host).is_loopback
    assert ipaddress.ip_address(inspect.signature(demo.serve).parameters["host"].default).is_loopback
    served = {}
    monkeypatch.setattr(demo, "serve", lambda **kwargs: served.update(kwargs))  # the demo verb loads it when run
    assert cli.main(["demo", "--model", "m.pt"]) == 0
    assert ipaddress.ip_address(served["host"]).is_loopback and served["port"] == 8000


@pytest.fixture(scope="module")
def trained_int8(trained_tensors, mnist_train):
    from mobile_lenet.quantization.quantize import quantize_model

    return quantize_model(trained_tensors, mnist_train.images[:300])


def test_an_int8_model_is_served_by_the_int8_engines(trained_int8, mnist_test, confident_digits):
    """The int8 model's probabilities, through either int8 engine, are the int8 C's dequantized logits (the oracle
    here: the C program on the host); its activations are the int8 network's own, not the float model's."""
    from mobile_lenet.engines.host_c import c_logits

    client = TestClient(demo.create_app(trained_int8, "int8"))
    assert client.get("/api/info").json()["engines"][:2] == ["reference", "c"]
    digit = mnist_test.images[confident_digits[0]]
    logits = trained_int8.dequantize_logits(c_logits(trained_int8, digit[None])).astype(np.float64)[0]
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    for engine in (None, "c"):
        answer = client.post("/api/predict", json={"pixels": digit.tolist(), **({"engine": engine} if engine else {})})
        assert answer.status_code == 200, answer.text
        answer = answer.json()
        assert answer["engine"] == (engine or "reference")
        np.testing.assert_allclose(answer["probabilities"], expected, rtol=0, atol=1e-6)
        assert [stage["shape"] for stage in answer["stages"]] == [[28, 28, 8]] * 3 + [[14, 14, 16]] * 2 + [[7, 7, 24]] * 2
    assert_error(client.post("/api/predict", json={"pixels": digit.tolist(), "engine": "torch"}), 400,
                 "unknown engine 'torch'")


def test_int8_stage_activations_are_the_int8_c_layers(trained_int8, mnist_test):
    """Each stage's map is the int8 C layer debugger's output of that stage's last layer, dequantized."""
    from mobile_lenet.engines.host_c import c_layer_outputs
    from mobile_lenet.spec import LAYERS

    digit = mnist_test.images[0]
    maps = demo.int8_stage_activations(trained_int8, digit)
    traced = c_layer_outputs(trained_int8, digit)
    block_of = {layer.name: layer.block for layer in LAYERS}
    last = {block_of[layer.rows[-1]]: number for number, layer in enumerate(trained_int8.layers, 1)}
    assert list(maps) == ["stem", "B1", "B2", "B3", "B4", "B5", "B6"]
    for stage, values in maps.items():
        layer = trained_int8.layers[last[stage] - 1]
        expected = (traced[last[stage]].astype(np.float64) - layer.out_zero_point) * layer.out_scale
        np.testing.assert_allclose(values.ravel(), expected, rtol=1e-6, atol=0)


def tiff_bytes(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(values.astype(np.float32), "F").save(buffer, format="TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize("what", ["all NaN", "one NaN", "infinity"])
def test_a_float_image_with_non_finite_pixels_is_refused(client, what):
    """PIL turns NaN into 0 and infinity into 255 when it makes a float TIFF gray: such a picture is refused, not
    read as a (blank) digit."""
    values = np.zeros((28, 28))
    values[10:18, 12:16] = 200.0
    if what == "all NaN":
        values[:] = np.nan
    elif what == "one NaN":
        values[3, 4] = np.nan
    else:
        values[0, 0] = np.inf
    response = client.post("/api/predict", content=tiff_bytes(values), headers={"Content-Type": "image/tiff"})
    assert_error(response, 400, "NaN or infinite")
    assert "\n" not in response.json()["error"]
    as_data_url = "data:image/tiff;base64," + base64.b64encode(tiff_bytes(values)).decode()
    assert_error(client.post("/api/predict", json={"image": as_data_url}), 400, "NaN or infinite")


def test_a_float_image_with_finite_pixels_is_read(client):
    """The control: the same TIFF with finite values is a digit like any other."""
    values = np.zeros((28, 28))
    values[10:18, 12:16] = 200.0
    response = client.post("/api/predict", content=tiff_bytes(values), headers={"Content-Type": "image/tiff"})
    assert response.status_code == 200, response.text
    assert np.array_equal(np.array(response.json()["input"]), values.astype(np.uint8))


# ------------------------------------------------------------------------------------------------ a real server
class LiveDemo:
    """The demo served by uvicorn as ``serve`` configures it (``demo.server_config``), on 127.0.0.1 at a free port,
    in a thread of this process; what uvicorn and asyncio log is kept in ``records``."""

    def __init__(self, tensors):
        import logging
        import socket
        import threading

        import uvicorn

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        app = demo.create_app(tensors, "trained_run", hosts=demo.allowed_hosts("127.0.0.1", self.port))
        self.server = uvicorn.Server(demo.server_config(app, "127.0.0.1", self.port))
        self.records: list[logging.LogRecord] = []
        self.handler = logging.Handler()
        self.handler.emit = self.records.append
        self.loggers = [logging.getLogger(), logging.getLogger("uvicorn")]  # uvicorn's own does not propagate
        for logger in self.loggers:
            logger.addHandler(self.handler)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, 30, "the server did not start")

    def connect(self):
        import socket

        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def get(self, path: str, timeout: float = 10):
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def errors(self) -> list[str]:
        return [record.getMessage() for record in self.records if record.levelno >= 30 or record.exc_info]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        for logger in self.loggers:
            logger.removeHandler(self.handler)
        self.socket.close()
        assert not self.thread.is_alive(), "the server did not stop"


def wait_until(condition, seconds: float, message: str) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.02)


@pytest.fixture
def live_demo(trained_tensors, monkeypatch):
    monkeypatch.setattr(demo, "REQUEST_TIMEOUT_S", 1.0)  # read when a connection starts
    server = LiveDemo(trained_tensors)
    yield server
    server.stop()


def seconds_until_closed(connection, send_slowly: bytes = b"") -> float:
    """Seconds until the server closes ``connection`` (recv gives b""), sending ``send_slowly`` a byte each 0.1 s
    meanwhile; fails if it is still open after 10 s."""
    import select
    import time

    start = time.monotonic()
    pending = list(send_slowly)
    while time.monotonic() - start < 10:
        if select.select([connection], [], [], 0.1)[0]:
            try:
                if connection.recv(65536) == b"":
                    return time.monotonic() - start
            except ConnectionResetError:
                return time.monotonic() - start
        elif pending:
            connection.send(bytes([pending.pop(0)]))
    raise AssertionError("the server still holds the half-sent request after 10 s")


HALF_SENT = {
    "nothing at all": (b"", b""),
    "half the headers": (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-", b""),
    "headers and half the body": (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/png"
                                  b"\r\nContent-Length: 5000\r\n\r\n" + b"\x89PNG" * 100, b""),
    "headers a byte at a time": (b"", b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: drip\r\n"
                                      b"Accept: */*\r\nX-Padding: " + b"x" * 60),
}


@pytest.mark.parametrize("what", HALF_SENT)
def test_a_half_sent_request_is_cut_off_at_the_deadline(live_demo, what):
    """A request that does not arrive whole within REQUEST_TIMEOUT_S (1 s here) loses its connection about then,
    even one trickling in a byte at a time; the server logs nothing and answers the next client."""
    first, slowly = (part.replace(b"{port}", str(live_demo.port).encode()) for part in HALF_SENT[what])
    with live_demo.connect() as connection:
        connection.sendall(first)
        elapsed = seconds_until_closed(connection, slowly)
    assert 0.8 < elapsed < 4, elapsed
    assert live_demo.get("/api/info")[0] == 200
    assert live_demo.errors() == []


def test_a_whole_request_sent_slowly_within_the_deadline_is_answered(live_demo):
    """The control: the deadline covers the request, not the answer; a request sent in pieces in time is answered,
    and so is a second one on the same kept-alive connection."""
    import time

    request = f"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1:{live_demo.port}\r\n\r\n".encode()
    with live_demo.connect() as connection:
        for _ in range(2):
            connection.sendall(request[:10])
            time.sleep(0.5)
            connection.sendall(request[10:])
            reply = b""
            while b'"max_body_bytes"' not in reply:
                chunk = connection.recv(65536)
                assert chunk, "closed before the answer"
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200")
    assert live_demo.errors() == []


def test_a_client_leaving_mid_body_is_let_go_without_a_traceback(live_demo):
    """Starlette raises ClientDisconnect in the body read when the client goes: answered quietly, not logged as an
    exception in the application."""
    with live_demo.connect() as connection:
        connection.sendall(f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{live_demo.port}\r\n"
                           "Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n".encode() + b"\0" * 1000)
        wait_until(lambda: live_demo.server.server_state.tasks, 10, "the request never reached the application")
    wait_until(lambda: not live_demo.server.server_state.tasks, 10, "the request task is still running")
    assert live_demo.errors() == []
    assert live_demo.get("/api/info")[0] == 200


def test_info_stays_quick_while_a_picture_decodes(live_demo, monkeypatch):
    """Decoding runs off the event loop: with a decode that takes 2 s, /api/info still answers at once."""
    import http.client
    import threading
    import time

    decoding = threading.Event()
    real_to_gray = demo.to_gray

    def slow_to_gray(img):
        decoding.set()
        time.sleep(2)  # what four 4096x4096 PNGs cost a shared machine, but certain
        return real_to_gray(img)

    monkeypatch.setattr(demo, "to_gray", slow_to_gray)
    answers = []

    def post_picture():
        connection = http.client.HTTPConnection("127.0.0.1", live_demo.port, timeout=30)
        connection.request("POST", "/api/predict", body=png_bytes(np.zeros((28, 28), np.uint8)),
                           headers={"Content-Type": "image/png"})
        answers.append(connection.getresponse().status)
        connection.close()

    poster = threading.Thread(target=post_picture, daemon=True)
    poster.start()
    assert decoding.wait(10), "the picture never reached the decoder"
    start = time.monotonic()
    assert live_demo.get("/api/info")[0] == 200
    assert time.monotonic() - start < 1.0  # 2 s if the decoding held the event loop
    poster.join(timeout=30)
    assert answers == [200]
    assert live_demo.errors() == []
