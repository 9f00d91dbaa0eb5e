"""``mobile-lenet demo``: a local web page to draw a digit and watch Mobile-LeNet classify it.

The page (``demo_static/``) has a large drawing canvas (mouse, pen or finger), an image upload, a choice
of engine, the class probabilities, the 28x28 image the network really sees and the activations after
each stage. It talks to one JSON endpoint, ``POST /api/predict``.

How a drawing becomes a network input
-------------------------------------
MNIST digits were made by scaling each digit to fit a 20x20 box (keeping its aspect ratio) and placing it
in a 28x28 image so that its centre of mass sits at the centre. A digit drawn on a 280x280 canvas is
nothing like that: it can be anywhere, of any size, with strokes of any width. So the server does not
merely shrink the canvas: it runs ``images.mnist_style`` on the raw canvas pixels (crop to the ink,
scale into 20x20 with a Lanczos filter, which is also the downsampling, centre by mass in 28x28). Only
then do hand-drawn digits look like the training digits, and get recognised as well.

Requests (at most ``MAX_BODY_BYTES``; everything else gets a 4xx with ``{"error": "..."}``):

* ``application/json``: ``{"image": "data:image/png;base64,..."}`` (what the page sends: the canvas as
  PNG) or ``{"pixels": [[0..255, ...], ...]}`` (grayscale rows, white digit on black), optionally with
  ``"engine"`` (see ``GET /api/info``) and ``"invert"`` (``auto`` | ``yes`` | ``no``, as for
  ``mobile-lenet predict``: auto inverts dark digits on light paper).
* an image file as the body (``image/png``, ``image/jpeg``, ...), with ``?engine=`` and ``?invert=``.

The answer: ``prediction``, ``probabilities`` (10), ``input`` (the network input: 28x28, or the input size of a
family member, resized from the 28x28 picture as training resizes its images), ``blank`` (no
ink at all) and ``stages``: for the stem and each block (B1, B2, ...), the output shape and a PNG mosaic of all channels.
Probabilities come from the chosen engine; the activations of a float model come from the PyTorch model
(``forward_all``), which computes the same network, and those of an int8 model (a ``mobile-lenet quantize``
folder) from the int8 engine, dequantized: what the int8 network itself computes.

Engines (``GET /api/info``): the host's (``torch``, ``reference``, ``c``; an int8 model: ``reference``, ``c``),
then the simulated microcontrollers (``demo_mcu``: ``cortex-m0plus``, ``cortex-m4f``, ``atmega2560``, ``esp32``,
each where its cross compiler and simulator are installed and the model fits the chip; ``/api/info`` gives the
reason for each other one). A microcontroller's answer is its firmware's serial reply, the digit and its
confidence (the other nine probabilities are null), plus ``microcontroller``: the instructions (QEMU) or cycles
(simavr) of each layer for this image, their sum, and the latency at the chip's clock. A busy or failed
simulator is a 503.

Serving: a request must arrive whole (headers and body) within ``REQUEST_TIMEOUT_S`` of the connection's
start (or of the previous answer on a kept-alive connection), else the connection is closed, so half-sent
requests cannot pile up. Decoding, preprocessing and the network all run in worker threads, so
``GET /api/info`` and the page stay quick while large pictures decode. A client that goes away mid-body
is let go without a word.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import os
import socket
from pathlib import Path

import h11
import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from matplotlib import colormaps
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from mobile_lenet import spec
from mobile_lenet.apps.demo_mcu import McuEngines, SimulatorUnavailable
from mobile_lenet.apps.report import stage_activations, stages
from mobile_lenet.engines.reference import softmax
from mobile_lenet.engines.reference_int8 import run_int8_layer
from mobile_lenet.engines.registry import engines_for, is_int8, member_images, real_logits
from mobile_lenet.errors import UserError
from mobile_lenet.formats.model_files import load_model
from mobile_lenet.model.images import SIZE, NonFiniteImage, looks_dark_on_light, mnist_style, to_gray
from mobile_lenet.model.network import from_noodle
from mobile_lenet.quantization.arithmetic import quantize_input

STATIC_DIR = Path(__file__).with_name("demo_static")
DEFAULT_MODEL = Path("runs") / "main" / "best.pt"  # what the main job (`mobile-lenet pipeline`) writes
MAX_BODY_BYTES = 2 * 1024 * 1024  # a 280x280 canvas PNG is ~10 kB; photos from a phone fit too
MAX_IMAGE_SIDE = 4096  # checked before decoding, so a tiny PNG cannot unpack into gigabytes
MAX_PIXEL_ROWS = 1024  # for {"pixels": ...}: at most 1024x1024 values
MOSAIC_COLUMNS = 8  # channels per row in an activation mosaic
REQUEST_TIMEOUT_S = 15.0  # a request's headers and body must arrive within this long (2 MB at 140 kB/s)
KEEP_ALIVE_S = 5  # an idle kept-alive connection is closed after this long


class RequestError(Exception):
    """A bad request: answered with ``status`` and ``{"error": message}``, the server carries on."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# ------------------------------------------------------------------------------------------------ engines, model
def resolve_model(model: str | os.PathLike | None) -> Path:
    """The MODEL to serve: the one given, else the main job's runs/main/best.pt, else a clear UserError."""
    if model:
        return Path(model)
    if DEFAULT_MODEL.is_file():
        return DEFAULT_MODEL
    raise UserError(f"no model to serve: {DEFAULT_MODEL} does not exist here. Run the main job first "
                    "(`mobile-lenet pipeline`, which trains into runs/main), or pass --model with a run folder, "
                    "a checkpoint (.pt), a folder of Noodle files, a .keras file or a quantized model folder")


# ------------------------------------------------------------------------------------------------ decoding
def decode_image(data: bytes) -> np.ndarray:
    """Image file bytes (PNG, JPEG, ...) -> grayscale uint8 array; RequestError if it is not one."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if max(width, height) > MAX_IMAGE_SIDE:
                raise RequestError(413, f"image is {width}x{height}; at most {MAX_IMAGE_SIDE} pixels a side")
            # Transparent pixels count as background: flattened onto black (the canvas' background).
            return to_gray(img)
    except NonFiniteImage as e:  # a float TIFF of NaNs is no digit (PIL would make it black without a word)
        raise RequestError(400, str(e)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise RequestError(400, f"not a readable image ({type(e).__name__})") from None


def decode_data_url(text: object) -> bytes:
    """The bytes of a ``data:image/...;base64,...`` URL (plain base64 is accepted too)."""
    if not isinstance(text, str) or not text:
        raise RequestError(400, '"image" must be a data URL string such as "data:image/png;base64,..."')
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise RequestError(400, '"image" data URL must be base64-encoded ("data:image/png;base64,...")')
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, '"image" is not valid base64') from None


def decode_pixels(rows: object) -> np.ndarray:
    """``[[0..255, ...], ...]`` -> grayscale uint8 array; RequestError naming what is wrong."""
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
        raise RequestError(400, '"pixels" must be a non-empty list of rows (lists of numbers 0..255)')
    if len(rows) > MAX_PIXEL_ROWS or any(len(r) > MAX_PIXEL_ROWS for r in rows):
        raise RequestError(413, f'"pixels" may have at most {MAX_PIXEL_ROWS} rows of {MAX_PIXEL_ROWS} values')
    if len({len(r) for r in rows}) != 1 or not rows[0]:
        raise RequestError(400, '"pixels" rows must all have the same, non-zero length')
    # numbers only: no strings ("12" would otherwise be converted), no booleans, no nested lists
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for r in rows for v in r):
        raise RequestError(400, '"pixels" must hold numbers only')
    try:
        values = np.array(rows, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(400, '"pixels" must hold numbers only') from None
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 255:
        raise RequestError(400, '"pixels" values must be numbers from 0 to 255')
    return np.round(values).astype(np.uint8)


def to_network_input(gray: np.ndarray, invert: str = "auto") -> np.ndarray:
    """Grayscale picture -> the 28x28 uint8 network input, MNIST style (see the module docstring).

    Same rule as ``images.load_digit``: invert dark-on-light pictures (``auto`` looks at the border), keep
    a 28x28 picture as it is (it is an MNIST digit already), and pass anything else through ``mnist_style``.
    """
    if invert not in ("auto", "yes", "no"):
        raise RequestError(400, f'"invert" must be auto, yes or no, not {invert!r}')
    if invert == "yes" or (invert == "auto" and looks_dark_on_light(gray)):
        gray = 255 - gray
    if gray.shape == (SIZE, SIZE):
        return gray.copy()
    return mnist_style(gray)


def parse_request(body: bytes, content_type: str, query: dict) -> tuple[np.ndarray, str | None, str]:
    """Request body -> (grayscale picture, engine (None: the model's default), invert), or RequestError."""
    if not body:
        raise RequestError(400, 'empty request body: send JSON {"image": "data:image/png;base64,..."} or '
                                '{"pixels": [[...], ...]}, or an image file')
    media_type = content_type.split(";")[0].strip().lower()
    if media_type == "application/json":
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, ValueError) as e:
            raise RequestError(400, f"body is not valid JSON ({e})") from None
        except RecursionError:
            raise RequestError(400, "body is not usable JSON (nested too deeply)") from None
        if not isinstance(payload, dict):
            raise RequestError(400, 'JSON body must be an object with "image" or "pixels"')
        if ("image" in payload) == ("pixels" in payload):
            raise RequestError(400, 'JSON body needs exactly one of "image" (a data URL) and "pixels" (rows)')
        gray = (decode_image(decode_data_url(payload["image"])) if "image" in payload
                else decode_pixels(payload["pixels"]))
        return gray, payload.get("engine"), payload.get("invert", "auto")
    if media_type.startswith("image/") or media_type == "application/octet-stream":
        return decode_image(body), query.get("engine"), query.get("invert", "auto")
    raise RequestError(415, f"unsupported Content-Type {media_type or '(none)'!r}: send application/json or "
                            "an image (image/png, image/jpeg, ...)")


# ------------------------------------------------------------------------------------------------ answers
def activation_mosaic(maps: np.ndarray) -> str:
    """All channels (C, H, W) of one stage as a PNG data URL: a grid of MOSAIC_COLUMNS maps a row.

    Each map is scaled to its own maximum (ReLU outputs differ in range from channel to channel) and
    coloured with matplotlib's "inferno" map, as in the report; 1-pixel gaps separate the maps.
    """
    channels, height, width = maps.shape
    rows = -(-channels // MOSAIC_COLUMNS)
    mosaic = np.full((rows * (height + 1) - 1, MOSAIC_COLUMNS * (width + 1) - 1), np.nan)
    for c, feature_map in enumerate(maps):
        top, left = (c // MOSAIC_COLUMNS) * (height + 1), (c % MOSAIC_COLUMNS) * (width + 1)
        mosaic[top:top + height, left:left + width] = feature_map / max(float(feature_map.max()), 1e-6)
    rgba = colormaps["inferno"](np.nan_to_num(mosaic), bytes=True)
    rgba[np.isnan(mosaic)] = (255, 255, 255, 255)  # the gaps
    buffer = io.BytesIO()
    Image.fromarray(rgba[..., :3]).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def int8_stage_activations(qmodel, image: np.ndarray) -> dict[str, np.ndarray]:
    """Feature maps (C, H, W) after each stage of the int8 network for one uint8 image of its input size: the int8
    engine's outputs, dequantized ((q - zero point) * scale) so they show on the float model's colour scale."""
    block_of = {layer.name: layer.block for layer in spec.layers(qmodel.architecture)}
    x, maps = quantize_input(image[None]), {}
    for layer in qmodel.layers:
        x = run_int8_layer(layer, x)
        stage = block_of[layer.rows[-1]]
        if stage in stages(qmodel.architecture):  # a stage's last layer comes last, so it is the one kept
            maps[stage] = (x[0].astype(np.float32) - layer.out_zero_point) * np.float32(layer.out_scale)
    return maps


class DemoModel:
    """The served model, float (Noodle tensors, plus a PyTorch model for the activations) or int8, and its engines:
    the host's (``engines.registry``) and the simulated microcontrollers' (``demo_mcu``; ``targets``: which of
    them, None for every one whose tools are installed and whose chip the model fits)."""

    def __init__(self, model, label: str, targets: list[str] | None = None):
        self.model, self.label = model, label
        self.architecture = spec.architecture_of(model)  # the family member the model records
        self.torch_model = None if is_int8(model) else from_noodle(model, self.architecture)
        self.microcontrollers = McuEngines(model, targets)
        self.engines = (*engines_for(model), *self.microcontrollers.names)

    def predict(self, image: np.ndarray, engine: str | None = None) -> dict:
        """Probabilities, prediction and per-stage activations of one 28x28 uint8 MNIST-style picture, resized
        to the model's input size as training resizes its images (``input`` is what the network sees); a
        microcontroller engine adds its per-layer counts (``microcontroller``), and only the predicted digit's
        probability is known from its reply (the other nine are None)."""
        image = member_images(self.model, image[None])[0]
        engine = engine or self.engines[0]
        if engine not in self.engines:
            raise RequestError(400, f"unknown engine {engine!r} (available: {', '.join(self.engines)})")
        microcontroller = None
        if engine in self.microcontrollers.names:
            try:
                microcontroller = self.microcontrollers.engine(engine).predict(image)
            except SimulatorUnavailable as e:
                raise RequestError(503, str(e)) from None
            # the serial protocol's reply carries the digit and its confidence, not the other probabilities
            prediction, probabilities = microcontroller.pop("digit"), [None] * spec.NUM_CLASSES
            probabilities[prediction] = microcontroller.pop("confidence")
        else:
            try:
                probabilities = softmax(real_logits(self.model, image[None], engine).astype(np.float64))[0]
            except UserError as e:
                raise RequestError(503, f"engine {engine} failed: {e}") from None
            prediction, probabilities = int(probabilities.argmax()), [float(p) for p in probabilities]
        activations = (int8_stage_activations(self.model, image) if self.torch_model is None
                       else stage_activations(self.torch_model, image))
        stages = [{"name": stage, "shape": [maps.shape[1], maps.shape[2], maps.shape[0]],
                   "image": activation_mosaic(maps)} for stage, maps in activations.items()]
        answer = {"engine": engine, "prediction": prediction, "probabilities": probabilities,
                  "blank": not image.any(), "input": image.tolist(), "stages": stages}
        if microcontroller is not None:
            answer["microcontroller"] = microcontroller
        return answer

    def close(self) -> None:
        """Stop the microcontroller simulators."""
        self.microcontrollers.close()


# ------------------------------------------------------------------------------------------------ web app
async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {int(declared):,} bytes is too large (limit {limit:,})")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # a chunked upload without Content-Length
                raise RequestError(413, f"request body is too large (limit {limit:,} bytes)")
            chunks.append(chunk)
    except ClientDisconnect:
        # The client went away (or was cut off by REQUEST_TIMEOUT_S) mid-body: nobody is left to answer, and
        # it is not the server's fault, so no traceback. The answer below goes nowhere (uvicorn drops it).
        raise RequestError(400, "the client disconnected before its request body was complete") from None
    return b"".join(chunks)


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def allowed_hosts(host: str, port: int) -> set[str] | None:
    """The ``Host`` headers a demo listening on ``host:port`` answers: its own address (any loopback name for a
    loopback address), so a web page elsewhere cannot reach it by DNS rebinding; None (any) for a wildcard."""
    if host in ("0.0.0.0", "::", ""):
        return None
    names = LOOPBACK_NAMES if host in ("127.0.0.1", "localhost", "::1") else (f"[{host}]" if ":" in host else host,)
    return {f"{name}:{port}" for name in names} | ({*names} if port == 80 else set())


def create_app(model, label: str = "model", hosts: set[str] | None = None,
               targets: list[str] | None = None) -> FastAPI:
    """The FastAPI application serving the page, ``GET /api/info`` and ``POST /api/predict``; with ``hosts``,
    a request whose ``Host`` header is not one of them gets 400. ``targets``: the microcontroller engines (None:
    every target whose tools are installed and whose chip the model fits). Their simulators start on demand and
    stop when the application shuts down (its lifespan)."""
    demo_model = DemoModel(model, label, targets)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        try:
            yield
        finally:  # the simulators stop with the server (and die with the process in any case: PDEATHSIG)
            await run_in_threadpool(demo_model.close)

    app = FastAPI(title="Mobile-LeNet demo", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.demo_model = demo_model

    if hosts is not None:
        @app.middleware("http")
        async def check_host(request: Request, call_next):
            if request.headers.get("host", "").lower() not in hosts:
                return JSONResponse({"error": "unknown Host header: this demo answers only at its own address"},
                                    status_code=400)
            return await call_next(request)

    @app.exception_handler(RequestError)
    async def request_error(_request, error: RequestError):
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.exception_handler(Exception)
    async def unexpected_error(_request, error: Exception):
        # Still JSON, so the page can show it; the server itself carries on.
        return JSONResponse({"error": f"internal error: {type(error).__name__}: {error}"}, status_code=500)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/info")
    def info():
        return {"model": demo_model.label, "engines": demo_model.engines, "classes": spec.NUM_CLASSES,
                "microcontrollers": demo_model.microcontrollers.names,
                "unavailable_microcontrollers": demo_model.microcontrollers.unavailable,
                "stages": list(stages(demo_model.architecture)), "max_body_bytes": MAX_BODY_BYTES}

    def answer(body: bytes, content_type: str, query: dict) -> dict:
        gray, engine, invert = parse_request(body, content_type, query)
        return demo_model.predict(to_network_input(gray, invert), engine)

    @app.post("/api/predict")
    async def predict(request: Request):
        body = await read_body(request)
        # Parsing, decoding (a 4096x4096 PNG takes a while), preprocessing and the network all run in a worker
        # thread: on the event loop they would hold up every other request, /api/info included.
        return await run_in_threadpool(answer, body, request.headers.get("content-type", ""),
                                       dict(request.query_params))

    return app


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline on reading each request: its headers and body must arrive
    within ``REQUEST_TIMEOUT_S`` of the connection's start, or of the previous answer on a kept-alive connection,
    else the connection is closed. uvicorn itself bounds only the idle time between requests, so a client that
    sends half a request (or a byte a second) would otherwise hold its connection, and a request task, forever."""

    deadline: asyncio.TimerHandle | None = None

    def arm_deadline(self) -> None:
        self.disarm_deadline()
        self.deadline = self.loop.call_later(REQUEST_TIMEOUT_S, self.deadline_passed)

    def disarm_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def deadline_passed(self) -> None:
        self.deadline = None
        if not self.transport.is_closing() and self.conn.their_state is not h11.DONE:
            self.transport.close()  # the request task, if any, sees a disconnect

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.arm_deadline()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is h11.DONE:  # the whole request is in: the deadline is kept
            self.disarm_deadline()

    def on_response_complete(self) -> None:
        self.arm_deadline()  # for the next request (armed first: a pipelined one is read within the call below)
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        self.disarm_deadline()
        super().connection_lost(exc)


def server_config(app: FastAPI, host: str, port: int) -> uvicorn.Config:
    """How ``serve`` runs the app: HTTP/1.1 with the read deadline above, short keep-alive, warnings only."""
    return uvicorn.Config(app, host=host, port=port, http=DeadlineH11Protocol, timeout_keep_alive=KEEP_ALIVE_S,
                          log_level="warning")


def port_is_free(host: str, port: int) -> bool:
    """True if ``host:port`` can be bound now (so we can fail with one clear line instead of a traceback)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def serve(model: str | None = None, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load MODEL (default runs/main/best.pt) and serve the demo until Ctrl-C."""

    if not 0 < port < 65536:
        raise UserError(f"--port must be between 1 and 65535, not {port}")
    source = resolve_model(model)
    model = load_model(source)
    if not port_is_free(host, port):
        raise UserError(f"cannot listen on {host}:{port} (in use, or not an address of this machine); "
                        "choose another --port or --host")
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}: anyone who can reach this address can use the demo")
    shown_host = f"[{host}]" if ":" in host else host
    print(f"serving {source} at http://{shown_host}:{port}/ (Ctrl-C to stop)")
    # /api/info names the model by its file name only: a page must not learn where files sit on this machine
    app = create_app(model, label=Path(source).name, hosts=allowed_hosts(host, port))
    microcontrollers = app.state.demo_model.microcontrollers
    print(f"engines: {', '.join(app.state.demo_model.engines)}"
          + (" (each microcontroller's simulator starts at its first request)" if microcontrollers.names else ""))
    uvicorn.Server(server_config(app, host, port)).run()
