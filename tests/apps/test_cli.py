"""The CLI verbs end to end, in process: output, exit codes and one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image

from mobile_lenet import spec
from mobile_lenet.apps.cli import main
from mobile_lenet.engines.reference import reference_logits, reference_probabilities
from mobile_lenet.formats.model_files import load_tensors
from mobile_lenet.model.images import load_digit

from conftest import MNIST_10K, profile_chart_columns, write_idx_set


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_summary(capsys):
    code, out, _ = run(capsys, "summary")
    assert code == 0 and "B3_dw3x3_s2" in out and "3,258" in out
    code, out, _ = run(capsys, "summary", "--json")
    d = json.loads(out)
    assert d["totals"] == {"total_params": 3258, "trainable_params": 2890, "non_trainable_params": 368,
                           "macs": sum(layer["macs"] for layer in d["layers"])}
    assert len(d["layers"]) == 43 and d["layers"][-1]["name"] == "OUT"


def test_train_evaluate_predict(tmp_path, capsys, mnist_train, mnist_test):
    data = write_idx_set(tmp_path / "data", mnist_train.images[:1500], mnist_train.labels[:1500])
    write_idx_set(data, mnist_test.images[:300], mnist_test.labels[:300], prefix="t10k")
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "--data-dir", data, "--epochs", 2, "--lr", 0.01, "--out", run_dir,
                         "--quiet")
    assert code == 0, err
    assert (run_dir / "best.pt").is_file() and (run_dir / "metrics.csv").is_file()
    # 1,500 training images, no --batch-size: the small-set recipe's batch (ablation-small), recorded
    assert json.loads((run_dir / "config.json").read_text())["batch_size"] == 32
    # a second train into the same folder must not silently overwrite it
    code, _, err = run(capsys, "train", "--data-dir", data, "--epochs", 1, "--out", run_dir, "--quiet")
    assert code == 2 and "--resume" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(capsys, "train", "--resume", "--out", run_dir, "--quiet")
    assert code == 0 and "already finished all 2 epochs" in out, err
    code, out, err = run(capsys, "train", "--resume", "--epochs", 3, "--out", run_dir, "--quiet")
    assert code == 2 and "started with --epochs 2" in err

    code, out, _ = run(capsys, "evaluate", run_dir, "--data-dir", data, "--json")
    result = json.loads(out)
    assert code == 0 and result["n"] == 300
    # the CLI (torch engine) against counts made here from the NumPy reference engine's predictions
    tensors = load_tensors(run_dir / "best.pt")
    reference = reference_logits(tensors, mnist_test.images[:300]).argmax(axis=1)
    labels = mnist_test.labels[:300]
    confusion = np.zeros((10, 10), np.int64)
    for truth, guess in zip(labels, reference):
        confusion[truth, guess] += 1
    assert result["confusion"] == confusion.tolist()
    assert result["accuracy"] == float((reference == labels).mean())
    assert result["per_class"] == [pytest.approx(confusion[c, c] / confusion[c].sum(), abs=1e-12) for c in range(10)]
    code, out, _ = run(capsys, "evaluate", run_dir / "best.pt", "--data-dir", data)
    assert code == 0 and "confusion matrix" in out and "accuracy" in out

    # predict: a 28x28 MNIST digit as is, and the same digit scanned large as dark ink on white paper
    digit = mnist_test.images[0]
    Image.fromarray(digit).save(tmp_path / "small.png")
    big = Image.fromarray(255 - digit).resize((140, 140), Image.BILINEAR)
    big.convert("RGB").save(tmp_path / "big.jpg", quality=95)
    code, out, err = run(capsys, "predict", run_dir, tmp_path / "small.png", tmp_path / "big.jpg", "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2
    # a 28x28 picture is the network input as it is; the photo is inverted and centred MNIST-style. The
    # reference engine on those inputs is the oracle for the CLI's (torch) answer.
    inputs = np.stack([digit, load_digit(tmp_path / "big.jpg")])
    expected = reference_probabilities(tensors, inputs)
    for line, probs in zip(lines, expected):
        assert line["digit"] == int(probs.argmax())
        np.testing.assert_allclose(line["probabilities"], probs, rtol=0, atol=1e-4)
    # --invert yes and no are obeyed, whatever the picture looks like
    for invert, picture in (("yes", 255 - digit), ("no", digit)):
        code, out, err = run(capsys, "predict", run_dir, tmp_path / "small.png", "--invert", invert, "--json")
        assert code == 0, err
        probs = reference_probabilities(tensors, picture[None])[0]
        np.testing.assert_allclose(json.loads(out)["probabilities"], probs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "nope.pt", "--data-dir", MNIST_10K], "nope.pt: no such file"),
    (["evaluate", "{junk}", "--data-dir", MNIST_10K], "junk.pt: not a readable checkpoint"),
    (["predict", "{run}", "{junk}"], "not a readable image"),
    (["evaluate", "{run}", "--data-dir", "{empty}"], "no t10k-images"),
    (["train", "--resume", "--out", "{empty}"], "nothing to resume"),
    (["train", "--data-dir", MNIST_10K, "--epochs", "0", "--out", "{empty}/x"], "--epochs"),
    (["evaluate", "{run}", "--data-dir", MNIST_10K, "--engine", "gpu"], "invalid choice: 'gpu'"),
    (["predict", "{run}", "{junk}", "--engine", "gpu"], "invalid choice: 'gpu'"),
    (["train", "--out", "{empty}/x", "--epochs", "many"], "invalid int value: 'many'"),
    (["evaluate", "{run}", "--data-dir", MNIST_10K, "--limit", "-5"], "--limit"),
])
def test_bad_input_gives_one_line_error(tmp_path, capsys, trained_run, argv, message):
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    (tmp_path / "empty").mkdir()
    subs = {"{junk}": str(tmp_path / "junk.pt"), "{run}": str(trained_run), "{empty}": str(tmp_path / "empty")}
    argv = [next((a.replace(k, v) for k, v in subs.items() if k in str(a)), str(a)) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


@pytest.mark.slow
def test_a_training_set_of_5000_images_keeps_the_default_batch(tmp_path, capsys, mnist_train):
    """The small-set batch is for sets under 5,000 images: at 5,000 the run trains at the default recipe's 128."""
    data = write_idx_set(tmp_path / "data", mnist_train.images[:5000], mnist_train.labels[:5000])
    code, _, err = run(capsys, "train", "--data-dir", data, "--epochs", 1, "--no-augment", "--out", tmp_path / "run",
                       "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["batch_size"] == 128


def test_pipeline_offline_on_bundled_sample(tmp_path, capsys, monkeypatch):
    """The main job runs offline: trains, evaluates, quantizes, runs both models on the simulated
    microcontrollers whose tools are installed (each profiled per layer too: the report's per-block chart),
    exports and reports into one folder. esp32's compiler is hidden
    here: that target is one line naming its package, and the job still succeeds."""
    import re
    import shutil

    from mobile_lenet.engines.host_c import c_logits
    from mobile_lenet.formats.int8_folder import load_quantized
    from mobile_lenet.model.data import load_dataset

    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "clang-22" else real_which(name, *a, **k))
    out_dir = tmp_path / "main"
    code, out, err = run(capsys, "pipeline", "--dataset", "mnist-sample", "--epochs", 1, "--out", out_dir,
                         "--quiet")
    assert code == 0, err
    result = json.loads((out_dir / "evaluation.json").read_text())
    assert result["n"] == 1000
    assert json.loads((out_dir / "config.json").read_text())["batch_size"] == 32  # 3,000 images: a small set
    # the job's evaluation is best.pt's on the sample's held-out 1,000 images (checked with another engine)
    test_set = load_dataset("mnist-sample", "test")
    tensors = load_tensors(out_dir / "best.pt")
    predicted = reference_logits(tensors, test_set.images).argmax(axis=1)
    assert result["accuracy"] == float((predicted == test_set.labels).mean())
    # the int8 model in int8/, scored by the int8 C on the host (the job used the NumPy int8 engine)
    qmodel = load_quantized(out_dir / "int8")
    predicted_int8 = c_logits(qmodel, test_set.images).argmax(axis=1)
    int8_result = json.loads((out_dir / "evaluation-int8.json").read_text())
    assert int8_result["n"] == 1000 and int8_result["accuracy"] == float((predicted_int8 == test_set.labels).mean())
    for path in ("noodle/w01.txt", "onnx/mobile_lenet.onnx", "c/mobile_lenet.c", "c-int8/mobile_lenet.c",
                 "report/index.html"):
        assert (out_dir / path).is_file(), path

    deployment = json.loads((out_dir / "deployment.json").read_text())
    skipped = {s["target"]: s["reason"] for s in deployment["skipped"]}
    assert "clang-22" in skipped["esp32"] and "apt-get install clang-22" in skipped["esp32"]
    assert sum("esp32: skipped" in line for line in out.splitlines()) == 1
    rows = {(r["target"], r["precision"]): r for r in deployment["results"]}
    images = test_set.images[:deployment["count"]]
    expected = {"float32": predicted[:len(images)], "int8": predicted_int8[:len(images)]}
    weight_bytes = {"float32": 13_032, "int8": 3_670}  # summary --memory: the weights alone
    html = (out_dir / "report" / "index.html").read_text()
    chart = profile_chart_columns(html)  # the per-block cost chart, as the page shows it
    for target in ("cortex-m0plus", "cortex-m4f", "atmega2560"):
        if target in skipped:  # a machine without that toolchain
            assert "apt-get install" in skipped[target]
            continue
        for precision in ("float32", "int8"):
            row = rows[(target, precision)]
            if not row["fits"]:  # only the float network on the 8 KB chip
                assert (target, precision) == ("atmega2560", "float32") and "8,192" in row["reason"]
                continue
            assert row["predictions"] == expected[precision].tolist()
            assert weight_bytes[precision] < row["flash_bytes"] < row["flash_capacity"]
            share = 100 * row["flash_bytes"] / row["flash_capacity"]
            assert f"{row['flash_bytes']:,} of {row['flash_capacity']:,} B ({share:.1f}%)" in html
            ram = row["static_ram_bytes"] + row["peak_stack_bytes"]
            assert f'width:{100 * ram / row["ram_capacity"]:.1f}%' in html
            if (target, precision) == ("atmega2560", "int8"):  # row by row: no layer of its own to profile
                assert (target, precision) not in chart and row["profile"] is None
                assert "atmega2560 int8: runs the int8 model row by row" in html
                continue
            # the chart's blocks: the table's, in order; their counts add up to the whole-image count of the
            # normal build (no marks) plus a few instructions per mark, within each cell's rounding
            blocks = chart[(target, precision)]
            assert list(blocks) == ["stem", *(name for name, _, _ in spec.BLOCKS), "head"]
            shown = sum(count for count, _ in blocks.values())
            marks = {"float32": len(spec.LAYERS), "int8": len(qmodel.layers)}[precision]  # at most one a layer
            assert 0 < shown - row[f"{row['counts']}_per_image"]["mean"] <= 8 * marks + len(blocks)
    assert "<h2>Deployment</h2>" in html and re.search(r"esp32: clang-22 not found", html)


def _train_with_stderr_on(tmp_path, name, stderr, data):
    """Run ``train`` for one epoch in a child process whose stderr is ``stderr`` (a pipe or a terminal)."""
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", "import sys; from mobile_lenet.apps.cli import main; "
                           "sys.exit(main(sys.argv[1:]))", "train", "--data-dir", str(data), "--epochs", "1",
                           "--batch-size", "16", "--out", str(tmp_path / name)],
                          stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def _read_all(fd, chunks):
    """Read a terminal's master side until its other end is closed (EIO)."""
    import os

    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return
        if not chunk:
            return
        chunks.append(chunk)


def test_progress_bars_only_on_a_terminal(tmp_path, mnist_train):
    """In a pipe, stderr gets no bar redraws (the epoch's plain line goes to stdout); on a terminal the bar is
    drawn. 30 batches of 16 images: a bar redrawn per batch would write kilobytes."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios
    import threading

    data = write_idx_set(tmp_path / "data", mnist_train.images[:540], mnist_train.labels[:540])
    piped = _train_with_stderr_on(tmp_path, "piped", subprocess.PIPE, data)
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == "" and "epoch 1/1:" in piped.stdout
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # a new terminal is 0 columns wide
    drawn = []
    reader = threading.Thread(target=_read_all, args=(master, drawn))  # the terminal's buffer must not fill
    reader.start()
    try:
        on_terminal = _train_with_stderr_on(tmp_path, "terminal", slave, data)
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    drawn = b"".join(drawn)
    assert on_terminal.returncode == 0
    assert b"epoch 1/1" in drawn and b"batch" in drawn  # tqdm's bar: "epoch 1/1: ... batch/s"


def test_predict_takes_an_int8_model(tmp_path, capsys, trained_tensors, mnist_train, mnist_test):
    """predict Q img.png: the int8 engines' answer, checked against the int8 C program's dequantized logits."""
    from mobile_lenet.engines.host_c import c_logits
    from mobile_lenet.formats.int8_folder import save_quantized
    from mobile_lenet.quantization.quantize import quantize_model

    qmodel = quantize_model(trained_tensors, mnist_train.images[:300])
    save_quantized(qmodel, tmp_path / "q")
    digits = mnist_test.images[:3]
    for i, digit in enumerate(digits):
        Image.fromarray(digit).save(tmp_path / f"{i}.png")
    logits = qmodel.dequantize_logits(c_logits(qmodel, digits)).astype(np.float64)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    for engine in ([], ["--engine", "c"]):
        code, out, err = run(capsys, "predict", tmp_path / "q", *[tmp_path / f"{i}.png" for i in range(3)], "--json",
                             *engine)
        assert code == 0, err
        for line, probs in zip(out.splitlines(), expected):
            answer = json.loads(line)
            assert answer["digit"] == int(probs.argmax())
            np.testing.assert_allclose(answer["probabilities"], probs, rtol=0, atol=1e-6)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty download cache: every download fails as it does offline."""
    from mobile_lenet.model import data

    def no_network(url, **options):
        raise ConnectionError(f"{url}: network unreachable")

    monkeypatch.setenv("MOBILE_LENET_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(data.pooch, "retrieve", no_network)


def _fallback_note(err: str) -> list[str]:
    return [line for line in err.splitlines() if "using the bundled mnist-sample instead" in line]


def test_verbs_fall_back_to_the_bundled_sample_offline(tmp_path, capsys, offline, trained_run):
    """With no --data-dir, no cache and no network, every verb that needs images uses the bundled sample and says
    so in one line (on stderr: --json output stays one JSON object)."""
    code, out, err = run(capsys, "evaluate", trained_run, "--limit", 20, "--json")
    assert code == 0 and json.loads(out)["dataset"] == "mnist-sample/test" and len(_fallback_note(err)) == 1
    code, out, err = run(capsys, "quantize", trained_run, "--calibration-count", 50, "--out", tmp_path / "q")
    assert code == 0 and len(_fallback_note(err)) == 1 and "mnist-sample/train" in out
    assert "--calibration-data mnist-sample" in err and "--dataset" not in err  # a flag quantize has
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["calibration"]["dataset"] == "mnist-sample/train"
    code, out, err = run(capsys, "train", "--epochs", 1, "--batch-size", 256, "--out", tmp_path / "run", "--quiet")
    assert code == 0 and len(_fallback_note(err)) == 1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dataset"] == "mnist-sample"
    code, out, err = run(capsys, "device", "--port", tmp_path / "no-such-port", "--count", 1)
    assert code == 2 and len(_fallback_note(err)) == 1 and "no-such-port" in err.splitlines()[-1]


def test_simulate_falls_back_to_the_bundled_sample_offline(capsys, offline, trained_run):
    import shutil

    if shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None:
        pytest.skip("needs gcc-arm-none-eabi and qemu-system-arm")
    code, out, err = run(capsys, "simulate", trained_run, "--target", "cortex-m4f", "--count", 1, "--json")
    assert code == 0, err
    assert json.loads(out)["dataset"] == "mnist-sample/test" and len(_fallback_note(err)) == 1


def test_a_failed_download_names_the_verbs_own_flag(tmp_path, capsys, offline, trained_run):
    """quantize has --calibration-data, not --dataset: the hint names the flag the verb has."""
    code, _, err = run(capsys, "quantize", trained_run, "--calibration-data", "mnist", "--out", tmp_path / "q")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--calibration-data mnist-sample" in err and "--dataset" not in err
    code, _, err = run(capsys, "evaluate", trained_run, "--dataset", "mnist")
    assert code == 2 and "--dataset mnist-sample" in err


@pytest.mark.parametrize("argv", [["--help"], ["summary"], ["summary", "--memory", "--int8"], ["simulate", "--help"]])
def test_help_and_summary_load_no_torch_fastapi_or_matplotlib(argv):
    """`mobile-lenet --help` and `summary` must start fast: the heavy packages load only in the verbs that use them.
    Checked in a fresh interpreter (this one has long imported them)."""
    import os
    import subprocess
    import sys

    script = ("import sys, contextlib, io\nfrom mobile_lenet.apps.cli import main\n"
              "with contextlib.redirect_stdout(io.StringIO()):\n"
              "    try:\n        main(sys.argv[1:])\n    except SystemExit:\n        pass\n"
              "print(sorted(m for m in ('torch', 'fastapi', 'matplotlib', 'uvicorn', 'onnx') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
