"""Shared fixtures: paths to the shared reference data, small real data sets, and a quickly trained model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOBILE_LENET_SHARED", ROOT.parent / "shared"))
MNIST_10K = SHARED / "data" / "mnist-10k"
UPSTREAM = SHARED / "data" / "upstream-mobile-lenet"


def synthetic_digits(n: int, seed: int = 0):
    """Ten easily told apart classes: a bright bar at a class-specific position, plus noise."""
    from mobile_lenet.model.data import Dataset

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        r = 2 + 2 * int(c)
        images[i, r:r + 3, 4:24] = 230
    return Dataset(images, labels, "synthetic")


@pytest.fixture(scope="session")
def mnist_test():
    """The 10,000 official MNIST test images (from ../shared/data/mnist-10k)."""
    from mobile_lenet.model.data import load_dataset

    return load_dataset("mnist", "test", MNIST_10K)


@pytest.fixture(scope="session")
def mnist_train():
    """The first 10,000 official MNIST training images."""
    from mobile_lenet.model.data import load_dataset

    return load_dataset("mnist", "train", MNIST_10K)


@pytest.fixture(scope="session")
def upstream_tensors():
    """The seed author's trained weights (97.55% on MNIST), read from the Noodle text files."""
    from mobile_lenet.formats.model_files import load_tensors

    return load_tensors(UPSTREAM / "noodle")


@pytest.fixture(scope="session")
def upstream_int8(upstream_tensors, mnist_train):
    """The seed author's weights quantized to int8, calibrated on 300 training images."""
    from mobile_lenet.quantization.quantize import quantize_model

    return quantize_model(upstream_tensors, mnist_train.images[:300])


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, mnist_train):
    """A run folder with a model trained briefly by this project: best.pt, last.pt.

    8 epochs on 4,000 images (about 89% accurate; 3 epochs gave only about 50% with the batch-128 recipe, too few
    digits read confidently for the tests that need right answers): enough to tell engines apart on real digits,
    cheap enough to train in every test session."""
    from mobile_lenet.model.data import Dataset
    from mobile_lenet.model.training import TrainConfig, train

    out = tmp_path_factory.mktemp("trained_run")
    subset = Dataset(mnist_train.images[:4000], mnist_train.labels[:4000], "mnist-10k[:4000]")
    train(TrainConfig(epochs=8, seed=1, lr=1e-2), subset, out, progress=False, log=lambda s: None)
    return out


@pytest.fixture(scope="session")
def trained_tensors(trained_run):
    """Noodle tensors of the trained_run model."""
    from mobile_lenet.formats.model_files import load_tensors

    return load_tensors(trained_run / "best.pt")


@pytest.fixture(scope="session")
def member16_run(tmp_path_factory):
    """A run folder of a family member other than the seed's (alpha 0.5: channels 4,4,4,8,8,12,12; 16x16 inputs),
    trained 1 epoch on the bundled sample (about 25% accurate, a few seconds): the verbs' tests hold the engines
    and firmware to each other on it, so what matters is that it computes a definite network, not accuracy."""
    from mobile_lenet import spec
    from mobile_lenet.model.data import load_sample
    from mobile_lenet.model.training import TrainConfig, train

    out = tmp_path_factory.mktemp("member16_run")
    member = spec.Architecture.from_options(width=0.5, input_size=16)
    train(TrainConfig(epochs=1, batch_size=32, seed=1, lr=1e-2, architecture=member.to_dict()), load_sample("train"),
          out, progress=False, log=lambda s: None)
    return out


@pytest.fixture(scope="session")
def member16_tensors(member16_run):
    """The float weights of member16_run (they record their member, 16x16)."""
    from mobile_lenet.formats.model_files import load_tensors

    return load_tensors(member16_run / "best.pt")


CONFIDENT_P = 0.95  # a test digit the trained_run model reads right with at least this probability


def canvas_redrawing(digit: np.ndarray) -> np.ndarray:
    """A digit as a user redraws it on the 280x280 canvas: its bright pixels (>= 128) in full white, ten times
    larger (what the browser test draws, row stroke by row stroke)."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.where(digit >= 128, 255, 0).astype(np.uint8)).resize((280, 280),
                                                                                             Image.NEAREST))


@pytest.fixture(scope="session")
def confident_digits(trained_tensors, mnist_test):
    """Indices of MNIST test digits that the briefly trained trained_run model reads right, with probability
    > CONFIDENT_P, as they are, redrawn on a canvas and as large dark-on-light photos (reference engine).

    The fixture model is only ~89% accurate, so whether it reads one given image right can change with the
    CPU's rounding; these digits sit far from any decision boundary, so tests that need a correct answer hold."""
    from PIL import Image

    from mobile_lenet.engines.reference import reference_probabilities
    from mobile_lenet.model.images import mnist_style

    images, labels = mnist_test.images[:200], mnist_test.labels[:200]
    variants = [images,
                np.stack([mnist_style(canvas_redrawing(d)) for d in images]),
                np.stack([mnist_style(np.asarray(Image.fromarray(d).resize((140, 140), Image.BILINEAR)))
                          for d in images])]
    ok = np.ones(len(images), bool)
    for variant in variants:
        probs = reference_probabilities(trained_tensors, variant)
        ok &= (probs.argmax(1) == labels) & (probs.max(1) > CONFIDENT_P)
    indices = np.flatnonzero(ok).tolist()
    assert len(indices) >= 5, f"only {len(indices)} confidently read test digits: retrain the fixture longer"
    return indices


def train_member_briefly(out: Path, mnist_train, arch, epochs: int, lr: float) -> Path:
    """A run folder of the family member ``arch`` trained ``epochs`` epochs of batch 32 (seed 1) on the first 3,000
    images of the 10k training subset: a definite network for the engines to be held to each other on."""
    from mobile_lenet.model.data import Dataset
    from mobile_lenet.model.training import TrainConfig, train

    subset = Dataset(mnist_train.images[:3000], mnist_train.labels[:3000], "mnist-10k[:3000]")
    train(TrainConfig(epochs=epochs, batch_size=32, seed=1, lr=lr, architecture=arch.to_dict()), subset, out,
          progress=False, log=lambda s: None)
    return out


def write_idx_set(folder: Path, images: np.ndarray, labels: np.ndarray, prefix: str = "train", gz: bool = False):
    """Write a pair of IDX files the way the official MNIST files are named."""
    from mobile_lenet.model.data import write_idx

    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
    return folder


def profile_chart_columns(page: str) -> dict[tuple[str, str], dict[str, tuple[int, float]]]:
    """The report's per-block cost chart as a reader sees it: (target, precision) -> block -> (count, share in
    percent), read off the HTML of the "Cost per block" table (not from the record it was drawn from)."""
    import re

    table = page.partition("<h3>Cost per block")[2].partition("</table>")[0]
    header, *rows = table.split("<tr>")[1:]
    series = re.findall(r"<th>([\w-]+)<br><small>(\w+), (?:instructions|cycles)</small></th>", header)
    columns = {key: {} for key in series}
    for row in rows:
        block = re.match(r"<td>([^<]+)</td>", row)[1]
        cells = re.findall(r"<td>(?:<span class=\"bar\".*?</span></span>([\d,]+) <small>\(([\d.]+)%\)</small>)?</td>",
                           row.partition("</td>")[2])
        if block == "sum":
            continue
        assert len(cells) == len(series), row
        for key, (count, share) in zip(series, cells):
            if count:
                columns[key][block] = (int(count.replace(",", "")), float(share))
    return columns


XTENSA_TOOLS = ("clang-22", "llc-22", "llvm-mc-22", "xtensa-lx106-elf-ld", "qemu-system-xtensa")


def build_xtensa(sources, folder: Path, flags: tuple = ()) -> Path:
    """An ELF for the esp32 target from C sources with the target's start-up and runtime, the way
    c/targets/Makefile builds one (clang -> LLVM IR -> llc -mcpu=esp32 -> llvm-mc -> xtensa-lx106-elf-ld)."""
    from mobile_lenet.codegen import c_library as lib

    targets = Path(str(lib.c_folder())) / "targets"
    objects = []
    for source in [*map(Path, sources), targets / "runtime_xtensa.c"]:
        stem = folder / source.stem
        subprocess.run(["clang-22", "--target=xtensa", "-nostdlibinc", "-isystem", str(targets / "xtensa_libc"),
                        f"-I{targets}", f"-I{targets.parent}", "-std=c99", "-O2", "-ffp-contract=off", *flags,
                        "-S", "-emit-llvm", "-o", f"{stem}.ll", str(source)], check=True)
        subprocess.run(["llc-22", "-O2", "-mcpu=esp32", "-o", f"{stem}.s", f"{stem}.ll"], check=True)
        subprocess.run(["llvm-mc-22", "-triple=xtensa", "-mcpu=esp32", "-filetype=obj", "-o", f"{stem}.o",
                        f"{stem}.s"], check=True)
        objects.append(f"{stem}.o")
    for name in ("startup_xtensa", "fpu_xtensa"):
        subprocess.run(["llvm-mc-22", "-triple=xtensa", "-mcpu=esp32", "-filetype=obj", "-o", str(folder / f"{name}.o"),
                        str(targets / f"{name}.S")], check=True)
        objects.append(str(folder / f"{name}.o"))
    elf = folder / "program.elf"
    subprocess.run(["xtensa-lx106-elf-ld", f"-T{targets / 'esp32.ld'}", *objects, "-o", str(elf)], check=True,
                   capture_output=True)
    return elf


# ------------------------------------------------------------------------------------------------ killing runs
ZYGOTE = r"""
import json, os, sys
import mobile_lenet.apps.cli as cli
print("ready", flush=True)
for line in sys.stdin:
    argv = json.loads(line)
    pid = os.fork()
    if pid == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os._exit(cli.main(argv))
    print(pid, flush=True)
    sys.stdin.readline()  # reaped only when asked: until then the pid stays the run's (a zombie at worst)
    _, status = os.waitpid(pid, 0)
    print(status, flush=True)
"""


class Zygote:
    """A subprocess that has imported the CLI once and forks a run of it for each ``start``: runs begin at once, so
    a kill lands where it was aimed (it never runs PyTorch itself, so forking it is safe). ``env``: its
    environment (the runs inherit it)."""

    def __init__(self, env: dict | None = None):
        self.process = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, bufsize=1, env=env)
        assert self.process.stdout.readline().strip() == "ready"

    def start(self, argv: list[str]) -> int:
        self.process.stdin.write(json.dumps([str(a) for a in argv]) + "\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def wait(self) -> int:
        """The raw wait status of the last started run. Its pid is not reaped before this call, so a kill aimed at
        a run that has already ended cannot hit another process that was given the same pid since (pids wrap
        around at 32768 on a busy machine)."""
        self.process.stdin.write("reap\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=30)


def live_in_sessions(sessions) -> int:
    """Live processes in the process sessions ``sessions`` (a simulator a test started leads its own, with anything
    it spawned, even orphaned): the test's own children, never anything else on the machine."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        count += fields[0] != "Z" and int(fields[3]) in sessions  # state, ..., session id
    return count
