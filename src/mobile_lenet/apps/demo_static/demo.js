// Mobile-LeNet demo page: draw on a large canvas, send its pixels to POST /api/predict, show the answer.
//
// The canvas is sent as it is (a PNG data URL, white ink on black): the server turns it into a 28x28
// MNIST-style input (then the model's input size, for a family member of another size) (crop, fit in 20x20, centre by mass) and sends that input back, so the page can show
// what the network really sees.
//
// A simulated microcontroller engine (cortex-m4f, ...) answers with the firmware's digit and its confidence only
// (the serial protocol's reply): the other probabilities are null and shown as "–". Its instructions (QEMU) or
// cycles (simavr) per layer for this image are shown in the "On the microcontroller" panel.

"use strict";

const drawing = document.getElementById("drawing");
const pen = drawing.getContext("2d");
const networkInput = document.getElementById("network-input");
const engineSelect = document.getElementById("engine");
const statusLine = document.getElementById("status");

// What the page sent and got last; exposed as window.demo for tests and for the curious (devtools).
const demo = {
  busy: false,        // a request is in flight
  pending: null,      // the newest picture to classify once it returns (older ones are dropped)
  hasInk: false,      // something is drawn or uploaded
  source: null,       // {image: dataURL, invert: "auto"|"no"} of the last request sent
  lastResult: null,   // the last answer of /api/predict
  requests: 0,
  generation: 0,      // bumped by Clear: answers to requests sent before are ignored
};
window.demo = demo;

// ------------------------------------------------------------------------------------------ drawing
const STROKE_WIDTH = 20; // on 280x280: after the server fits the digit into 20x20, about MNIST's 2 px

function clearCanvas() {
  pen.fillStyle = "#000";
  pen.fillRect(0, 0, drawing.width, drawing.height);
  demo.hasInk = false;
  demo.source = null;
  demo.pending = null;
  demo.lastResult = null;
  demo.generation += 1;
  showResult(null);
}

function canvasPoint(event) {
  // The canvas may be shown at another size than its 280x280 pixels: map CSS pixels to canvas pixels.
  const box = drawing.getBoundingClientRect();
  return [(event.clientX - box.left) * drawing.width / box.width,
          (event.clientY - box.top) * drawing.height / box.height];
}

let lastPoint = null;
let uploadShown = false; // the canvas shows an uploaded picture: a new stroke starts a fresh drawing

// Pointer events cover mouse, pen and touch alike; touch-action: none (CSS) keeps fingers from scrolling.
drawing.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  if (uploadShown) {
    clearCanvas();
    uploadShown = false;
  }
  drawing.setPointerCapture(event.pointerId);
  lastPoint = canvasPoint(event);
  strokeTo(lastPoint); // a click makes a dot
});

drawing.addEventListener("pointermove", (event) => {
  if (lastPoint === null) return;
  const point = canvasPoint(event);
  strokeTo(point);
  lastPoint = point;
  requestPrediction(); // live: coalesced, at most one request in flight
});

function endStroke() {
  if (lastPoint === null) return;
  lastPoint = null;
  requestPrediction();
}
drawing.addEventListener("pointerup", endStroke);
drawing.addEventListener("pointercancel", endStroke);

function strokeTo([x, y]) {
  pen.strokeStyle = "#fff";
  pen.lineWidth = STROKE_WIDTH;
  pen.lineCap = "round";
  pen.lineJoin = "round";
  pen.beginPath();
  pen.moveTo(lastPoint[0], lastPoint[1]);
  pen.lineTo(x, y);
  pen.stroke();
  demo.hasInk = true;
}

document.getElementById("clear").addEventListener("click", clearCanvas);

// ------------------------------------------------------------------------------------------ upload
document.getElementById("upload").addEventListener("change", (event) => {
  const file = event.target.files[0];
  event.target.value = ""; // choosing the same file again fires "change" again
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    // The file goes to the server as it is (full resolution, automatic inversion of dark-on-light
    // photos); the canvas just shows it.
    const picture = new Image();
    picture.onload = () => {
      clearCanvas();
      const scale = Math.min(drawing.width / picture.width, drawing.height / picture.height);
      const w = picture.width * scale, h = picture.height * scale;
      pen.drawImage(picture, (drawing.width - w) / 2, (drawing.height - h) / 2, w, h);
      uploadShown = true;
      demo.hasInk = true;
      predict({image: reader.result, invert: "auto"});
    };
    picture.onerror = () => showError("the browser cannot read this file as an image");
    picture.src = reader.result;
  };
  reader.readAsDataURL(file);
});

// ------------------------------------------------------------------------------------------ predicting
function requestPrediction() {
  if (!demo.hasInk) return;
  // The canvas is white on black already, like MNIST: no inversion.
  predict({image: drawing.toDataURL("image/png"), invert: "no"});
}

// At most one request is in flight; while it is, only the newest picture waits (live drawing would
// otherwise queue a request per mouse move).
function predict(source) {
  demo.pending = {...source, engine: engineSelect.value};
  if (!demo.busy) sendPending();
}

async function sendPending() {
  const request = demo.pending;
  const generation = demo.generation;
  demo.pending = null;
  demo.busy = true;
  demo.source = request;
  demo.requests += 1;
  try {
    const response = await fetch("/api/predict", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify(request),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
    if (generation === demo.generation) {
      demo.lastResult = answer;
      showResult(answer);
    }
  } catch (error) {
    if (generation === demo.generation) showError(error.message);
  } finally {
    demo.busy = false;
    if (demo.pending) sendPending();
  }
}

engineSelect.addEventListener("change", () => {
  const latest = demo.pending || demo.source;
  if (latest) predict(latest); // the same picture again, through the newly chosen engine
});

// ------------------------------------------------------------------------------------------ showing
const bars = [];
function buildProbabilityBars() {
  const container = document.getElementById("probabilities");
  for (let digit = 0; digit < 10; digit++) {
    const row = {digit: document.createElement("span"), track: document.createElement("div"),
                 bar: document.createElement("div"), value: document.createElement("span")};
    row.digit.className = "digit";
    row.digit.textContent = digit;
    row.track.className = "track";
    row.bar.className = "bar";
    row.value.className = "value";
    row.track.appendChild(row.bar);
    container.append(row.digit, row.track, row.value);
    bars.push(row);
  }
}

function showResult(answer) {
  statusLine.textContent = "";
  const blank = answer === null || answer.blank;
  document.getElementById("prediction").textContent = blank ? "–" : answer.prediction;
  document.getElementById("confidence").textContent = blank ? "draw a digit"
    : `${(100 * answer.probabilities[answer.prediction]).toFixed(1)}% sure (engine: ${answer.engine})`;
  bars.forEach((row, digit) => {
    const p = blank ? 0 : answer.probabilities[digit];
    row.bar.style.width = `${100 * (p ?? 0)}%`;
    row.value.textContent = blank ? "" : p === null ? "–" : `${(100 * p).toFixed(1)}%`;
    const best = !blank && digit === answer.prediction;
    row.track.classList.toggle("best", best); // the predicted digit's bar in the accent colour
  });
  drawNetworkInput(blank ? null : answer.input);
  showStages(blank ? [] : answer.stages);
  showMicrocontroller(answer === null ? null : answer.microcontroller || null);
}

const number = new Intl.NumberFormat("en-US", {maximumFractionDigits: 0});

// The simulator's count per layer for this image, as a table with a bar for each layer's share.
function showMicrocontroller(mcu) {
  const panel = document.getElementById("mcu-panel");
  panel.hidden = mcu === null;
  if (mcu === null) return;
  document.getElementById("mcu-summary").textContent =
    `${mcu.target} (${mcu.chip}, ${mcu.precision}) in ${mcu.simulator}: ${number.format(mcu.whole_image)} ` +
    `${mcu.counts} for this image, ${mcu.ms_at_clock.toFixed(1)} ms at ${mcu.clock_hz / 1e6} MHz ` +
    `(${mcu.latency_assumes})`;
  document.getElementById("mcu-unit").textContent = mcu.counts;
  const rows = mcu.layers.map((layer) => [layer.layer, layer.name, layer.count]);
  if (mcu.after_last_layer !== null) rows.push(["", "after the last layer (softmax, argmax)", mcu.after_last_layer]);
  const largest = Math.max(1, ...rows.map((row) => row[2]));
  document.querySelector("#mcu-layers tbody").replaceChildren(...rows.map(([index, name, count]) => {
    const row = document.createElement("tr");
    row.innerHTML = `<td></td><td></td><td class="count"></td><td class="count"></td><td class="share"><div></div></td>`;
    const cells = row.querySelectorAll("td");
    cells[0].textContent = index;
    cells[1].textContent = name;
    cells[2].textContent = number.format(count);
    cells[3].textContent = `${(100 * count / mcu.whole_image).toFixed(1)}%`;
    cells[4].firstChild.style.width = `${100 * count / largest}%`; // the costliest layer's bar is full width
    return row;
  }));
  document.getElementById("mcu-layers").hidden = rows.length === 0;
  document.getElementById("mcu-note").textContent = [
    mcu.per_layer_note,
    mcu.marks ? `The firmware marks the end of each of its ${mcu.marks} layers; the marks' own calls (a few ` +
      `${mcu.counts} each) are in the counts.` : null,
    `Measured: ${mcu.measure_note}.`,
  ].filter(Boolean).join(" ");
}

function drawNetworkInput(rows) {
  // SxS: the served model's input size (28 for the seed's network, 16 to 32 for other family members)
  const size = rows ? rows.length : networkInput.width;
  networkInput.width = networkInput.height = size;
  const context = networkInput.getContext("2d");
  const pixels = context.createImageData(size, size);
  for (let i = 0; i < size * size; i++) {
    const v = rows ? rows[Math.floor(i / size)][i % size] : 0;
    pixels.data.set([v, v, v, 255], 4 * i);
  }
  context.putImageData(pixels, 0, 0);
}

function showStages(stages) {
  const container = document.getElementById("stages");
  container.replaceChildren(...stages.map((stage) => {
    const figure = document.createElement("div");
    figure.className = "stage";
    const [h, w, c] = stage.shape;
    figure.innerHTML = `<div class="name"></div><img alt=""><div class="shape"></div>`;
    figure.querySelector(".name").textContent = stage.name;
    figure.querySelector(".shape").textContent = `${h}×${w}×${c}`;
    const picture = figure.querySelector("img");
    picture.src = stage.image;
    picture.alt = `${stage.name} activations`;
    picture.width = 232; // every stage as wide: small maps get large pixels
    return figure;
  }));
}

function showError(message) {
  statusLine.textContent = `error: ${message}`;
}

// ------------------------------------------------------------------------------------------ start
async function start() {
  buildProbabilityBars();
  clearCanvas();
  try {
    const info = await (await fetch("/api/info")).json();
    for (const engine of info.engines) engineSelect.add(new Option(engine, engine));
    document.getElementById("model-name").textContent = `model: ${info.model}`;
  } catch (error) {
    showError(`cannot reach the server (${error.message})`);
  }
}
start();
