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
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_page_and_static_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas id=\"drawing\"" in page.text
    assert client.get("/static/demo.js").status_code == 200
    assert client.get("/static/demo.css").status_code == 200


def test_info_lists_the_engines_of_a_float_model(client):
    info = client.get("/api/info").json()
    assert info["engines"] == ["torch", "reference", "c"]
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
    assert client.get("/api/info").json()["engines"] == ["reference", "c"]
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
