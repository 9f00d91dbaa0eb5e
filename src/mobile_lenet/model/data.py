"""MNIST-like data sets: 28x28 grayscale images (uint8) with labels 0..9.

Sources, in the order ``load_dataset`` tries them:

* ``--data-dir DIR``: a folder of IDX files with the standard names (``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]``, ``t10k-...``), or Keras' ``mnist.npz``, or CSV files with the label
  first (``mnist_train.csv`` / ``mnist_test.csv``, the seed's format).
* ``mnist-sample``: a few thousand MNIST training images bundled with the package, so everything works
  offline. Its "test" split is a disjoint part of the same sample, not the official test set.
* ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``).
* otherwise the official files are downloaded once into a cache folder with ``pooch``, md5-checked.

Every reader validates what it reads and raises ``DataError`` naming the file and the problem.
"""

from __future__ import annotations

import csv
import gzip
import os
import sys
import zipfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pooch

from mobile_lenet.errors import UserError
from mobile_lenet.files import check_readable_file

IMAGE_SIZE = 28
IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


class DataError(UserError):
    """A data file is missing, truncated or not what it claims to be."""


@dataclass
class Dataset:
    """Images (N, 28, 28) uint8, white digit on black, and labels (N,) uint8."""

    images: np.ndarray
    labels: np.ndarray
    name: str = ""

    def __len__(self) -> int:
        return len(self.labels)


# --------------------------------------------------------------------------------------------------- IDX
MAX_IDX_ITEMS = 10_000_000  # far beyond any MNIST-like set (70,000); refuses absurd headers before reading


def _open(path: Path):
    check_readable_file(path)
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_at_most(path: Path, f, count: int) -> bytes:
    """Up to ``count`` bytes of an open (possibly gzipped) file; DataError naming the file on any failure."""
    try:
        return f.read(count)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file of unsigned bytes (optionally gzipped); returns images (N,28,28) or labels (N,).

    The header is read first and the body only up to the size it declares (plus one byte to detect
    trailing data), so a small gzip that expands to gigabytes costs no more than the declared size."""
    path = Path(path)
    try:
        f = _open(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        raw = _read_at_most(path, f, 4)
        if len(raw) < 4:
            raise DataError(f"{path}: truncated header ({len(raw)} bytes)")
        magic = int.from_bytes(raw[:4], "big")
        if magic not in (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC):
            raise DataError(f"{path}: bad magic number 0x{magic:08x} (expected 0x{IDX_IMAGES_MAGIC:08x} for images "
                            f"or 0x{IDX_LABELS_MAGIC:08x} for labels)")
        ndim = magic & 0xFF
        header = 4 + 4 * ndim
        raw += _read_at_most(path, f, header - 4)
        if len(raw) < header:
            raise DataError(f"{path}: truncated header ({len(raw)} bytes, need {header})")
        dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
        if ndim == 3 and dims[1:] != [IMAGE_SIZE, IMAGE_SIZE]:
            raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
        if dims[0] > MAX_IDX_ITEMS:
            raise DataError(f"{path}: header says {dims[0]:,} items, more than the {MAX_IDX_ITEMS:,} accepted")
        expected = int(np.prod(dims))
        body = _read_at_most(path, f, expected + 1)
    if len(body) != expected:
        what = "truncated" if len(body) < expected else "has trailing bytes"
        size = f"{len(body)} bytes" if len(body) <= expected else "more"
        raise DataError(f"{path}: {what}: header says {dims[0]} items ({expected} bytes), file has {size}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write images (N,28,28) or labels (N,) as an IDX file (gzipped when the name ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = IDX_IMAGES_MAGIC if array.ndim == 3 else IDX_LABELS_MAGIC
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path = Path(path)
    with (gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb")) as f:
        f.write(header + array.tobytes())


def _check_pair(images: np.ndarray, labels: np.ndarray, where: str) -> None:
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{where}: images have shape {images.shape}, expected (N, 28, 28)")
    if labels.ndim != 1:
        raise DataError(f"{where}: labels have shape {labels.shape}, expected (N,)")
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise DataError(f"{where}: holds no images")
    if labels.max() > 9:
        raise DataError(f"{where}: label {int(labels.max())} out of range 0..9")


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).exists():
            return folder / name
    return None


def read_idx_pair(folder: Path, prefix: str) -> Dataset:
    """Read ``{prefix}-images-idx3-ubyte[.gz]`` and ``{prefix}-labels-idx1-ubyte[.gz]`` from a folder."""
    img_path, lbl_path = _find(folder, f"{prefix}-images-idx3-ubyte"), _find(folder, f"{prefix}-labels-idx1-ubyte")
    if img_path is None or lbl_path is None:
        missing = f"{prefix}-images-idx3-ubyte[.gz]" if img_path is None else f"{prefix}-labels-idx1-ubyte[.gz]"
        raise DataError(f"{folder}: no {missing}")
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3:
        raise DataError(f"{img_path}: holds labels, not images")
    if labels.ndim != 1:
        raise DataError(f"{lbl_path}: holds images, not labels")
    if len(images) != len(labels):
        raise DataError(f"{img_path}: {len(images)} images but {lbl_path.name} has {len(labels)} labels")
    _check_pair(images, labels, str(lbl_path))
    return Dataset(images, labels, str(folder))


# --------------------------------------------------------------------------------------------------- NPZ / CSV
def read_npz(path: Path, split: str) -> Dataset:
    """Read Keras' ``mnist.npz`` (arrays x_train, y_train, x_test, y_test)."""
    check_readable_file(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z[f"x_{split}"], z[f"y_{split}"]
    except KeyError as e:
        raise DataError(f"{path}: no array {e} (expected x_train, y_train, x_test, y_test)") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    if images.dtype != np.uint8:
        raise DataError(f"{path}: x_{split} has dtype {images.dtype}, expected uint8")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: y_{split} must be a 1-D array of integers 0..9, not {labels.dtype} "
                        f"{labels.shape}")
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels out of range 0..9")
    labels = labels.astype(np.uint8)
    _check_pair(images, labels, str(path))
    return Dataset(images, labels, str(path))


def read_csv(path: Path) -> Dataset:
    """Read a CSV with the label first and 784 pixel values (0..255) per row; a header row is skipped."""
    labels, pixels = [], []
    check_readable_file(path)
    try:
        with open(path, newline="") as f:
            for line_no, row in enumerate(csv.reader(f), start=1):
                if not row:
                    continue
                if line_no == 1 and not row[0].strip().isdigit():
                    continue  # header such as "label,1x1,1x2,..."
                if len(row) != 1 + IMAGE_SIZE * IMAGE_SIZE:
                    raise DataError(f"{path}: line {line_no} has {len(row) - 1} pixel values, expected 784")
                try:
                    values = [int(v) for v in row]
                except ValueError:
                    raise DataError(f"{path}: line {line_no} has a value that is not an integer") from None
                if not 0 <= values[0] <= 9 or min(values[1:]) < 0 or max(values[1:]) > 255:
                    raise DataError(f"{path}: line {line_no} has a label outside 0..9 or a pixel outside 0..255")
                labels.append(values[0])
                pixels.append(values[1:])
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if not labels:
        raise DataError(f"{path}: no data rows")
    images = np.array(pixels, dtype=np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    return Dataset(images, np.array(labels, dtype=np.uint8), str(path))


def read_data_folder(folder: str | os.PathLike, split: str = "train") -> Dataset:
    """Read one split ("train" or "test") from a folder of IDX, npz or CSV files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    prefix = {"train": "train", "test": "t10k"}[split]
    if _find(folder, f"{prefix}-images-idx3-ubyte") or _find(folder, f"{prefix}-labels-idx1-ubyte"):
        return read_idx_pair(folder, prefix)
    if (folder / "mnist.npz").exists():
        return read_npz(folder / "mnist.npz", split)
    if (folder / f"mnist_{split}.csv").exists():
        return read_csv(folder / f"mnist_{split}.csv")
    raise DataError(f"{folder}: no {prefix}-images-idx3-ubyte[.gz], mnist.npz or mnist_{split}.csv")


# --------------------------------------------------------------------------------------------------- named sets
# Official files and md5 checksums; several mirrors each, tried in order.
DOWNLOADS = {
    "mnist": {
        "mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
                    "https://storage.googleapis.com/cvdf-datasets/mnist/"],
        "md5": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
    },
    "fashion-mnist": {
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"],
        "md5": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
    },
}
SYSTEM_FOLDERS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")]}
DATASETS = ("mnist", "fashion-mnist", "mnist-sample")
SAMPLE_TEST_SIZE = 1000  # the last 1,000 images of the bundled sample are its "test" split


def cache_dir() -> Path:
    """Where downloads go: $MOBILE_LENET_CACHE, else the user's cache folder."""
    env = os.environ.get("MOBILE_LENET_CACHE")
    if env:
        return Path(env)

    return Path(pooch.os_cache("mobile-lenet"))


def download(name: str, flag: str = "--dataset") -> Path:
    """Download (once) and md5-check the official IDX files of ``name``; returns the folder. ``flag``: the verb's
    flag that names the data set, for the hint when the download fails."""
    info, folder = DOWNLOADS[name], cache_dir() / name
    for file_name, md5 in info["md5"].items():
        if (folder / file_name).is_file() and pooch.file_hash(str(folder / file_name), alg="md5") == md5:
            continue
        errors = []
        for mirror in info["mirrors"]:
            try:
                pooch.retrieve(mirror + file_name, known_hash=f"md5:{md5}", fname=file_name, path=folder,
                               progressbar=sys.stderr.isatty())  # no redraws into a log
                break
            except Exception as e:  # network errors come in many types (requests, OSError, ValueError)
                errors.append(f"{mirror}: {type(e).__name__}")
        else:
            raise DataError(f"cannot download {name} ({'; '.join(errors)}); offline? pass --data-dir DIR with "
                            f"the IDX files, or use {flag} mnist-sample (bundled)")
    return folder


def load_sample(split: str = "train") -> Dataset:
    """The bundled sample of MNIST training images (train: all but the last 1,000; test: the last 1,000)."""
    with resources.files("mobile_lenet").joinpath("assets/mnist_sample.npz").open("rb") as f:
        with np.load(f) as z:
            images, labels = z["images"], z["labels"]
    cut = len(labels) - SAMPLE_TEST_SIZE
    sl = slice(None, cut) if split == "train" else slice(cut, None)
    return Dataset(images[sl], labels[sl], f"mnist-sample/{split}")


def load_dataset(name: str = "mnist", split: str = "train", data_dir: str | os.PathLike | None = None,
                 flag: str = "--dataset") -> Dataset:
    """Load one split ("train" or "test") of a named data set, from ``data_dir`` if given (``flag``: see download)."""
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r} (use train or test)")
    if data_dir is not None:
        ds = read_data_folder(data_dir, split)
    elif name == "mnist-sample":
        ds = load_sample(split)
    elif name in DOWNLOADS:
        folder = next((f for f in SYSTEM_FOLDERS.get(name, []) if _find(f, "train-images-idx3-ubyte")), None)
        ds = read_data_folder(folder if folder else download(name, flag), split)
    else:
        raise UserError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
    ds.name = f"{name}/{split}" if data_dir is None else f"{data_dir}/{split}"
    return ds


def resolve_dataset(dataset: str, data_dir: str | os.PathLike | None, log=print, flag: str = "--dataset") -> str:
    """The data set ``auto`` means: MNIST if it is at hand (``data_dir``, the cache) or can be downloaded, else the
    bundled sample, said in one line through ``log``; any other name as it is. ``flag``: see download."""
    if dataset != "auto" or data_dir:
        return "mnist" if dataset == "auto" else dataset
    if dataset_available_offline("mnist"):
        return "mnist"
    try:
        download("mnist", flag)
        return "mnist"
    except DataError as e:
        log(f"full MNIST is not at hand ({e}); using the bundled mnist-sample instead")
        return "mnist-sample"


def dataset_available_offline(name: str) -> bool:
    """True if ``load_dataset(name)`` needs no download."""
    if name == "mnist-sample":
        return True
    if any(_find(f, "train-images-idx3-ubyte") for f in SYSTEM_FOLDERS.get(name, [])):
        return True
    folder = cache_dir() / name
    return name in DOWNLOADS and all((folder / f).is_file() for f in DOWNLOADS[name]["md5"])


def split_validation(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Carve a stratified-by-chance validation split off a training set (fixed by ``seed``)."""
    n_val = int(round(len(ds) * fraction))
    order = np.random.default_rng(seed).permutation(len(ds))
    val, train = order[:n_val], order[n_val:]
    return (Dataset(ds.images[train], ds.labels[train], ds.name + ":train"),
            Dataset(ds.images[val], ds.labels[val], ds.name + ":val"))


def to_tensor_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N,28,28) -> float32 (N,1,28,28) in [0,1], the network's input (pixel / 255)."""
    return (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]
