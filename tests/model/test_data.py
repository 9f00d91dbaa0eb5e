"""Readers for IDX, npz and CSV on real files and on corrupted ones; the bundled sample; splits."""

import gzip

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mobile_lenet.model.data import (DataError, load_dataset, read_csv, read_data_folder, read_idx, read_npz,
                               split_validation, to_tensor_input, write_idx)

from conftest import MNIST_10K, write_idx_set


def test_real_mnist_files(mnist_train, mnist_test):
    assert mnist_train.images.shape == (10000, 28, 28) and mnist_train.images.dtype == np.uint8
    assert mnist_test.images.shape == (10000, 28, 28)
    assert mnist_train.labels[:5].tolist() == [5, 0, 4, 1, 9]  # the famous first MNIST labels
    assert mnist_test.labels[:3].tolist() == [7, 2, 1]
    assert set(np.unique(mnist_test.labels)) == set(range(10))


def test_plain_and_gzip_idx_agree(tmp_path, mnist_test):
    images, labels = mnist_test.images[:50], mnist_test.labels[:50]
    a = read_data_folder(write_idx_set(tmp_path / "a", images, labels, gz=False), "train")
    b = read_data_folder(write_idx_set(tmp_path / "b", images, labels, gz=True), "train")
    np.testing.assert_array_equal(a.images, images)
    np.testing.assert_array_equal(b.labels, labels)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 20), st.data())
def test_idx_round_trip(tmp_path_factory, n, data):
    raw = data.draw(st.binary(min_size=n * 784, max_size=n * 784))
    images = np.frombuffer(raw, np.uint8).reshape(n, 28, 28)
    path = tmp_path_factory.mktemp("idx") / "x-idx3-ubyte"
    write_idx(path, images)
    np.testing.assert_array_equal(read_idx(path), images)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 16 + 10 * 784 - 1))  # every cut short of the full file
def test_truncated_idx_is_rejected(tmp_path_factory, cut):
    folder = tmp_path_factory.mktemp("trunc")
    path = folder / "train-images-idx3-ubyte"
    write_idx(path, np.zeros((10, 28, 28), np.uint8))
    raw = path.read_bytes()
    path.write_bytes(raw[:cut])
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        read_idx(path)


def test_wrong_magic(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte"
    write_idx(path, np.zeros(5, np.uint8))
    raw = bytearray(path.read_bytes())
    raw[2] = 0x0D  # float type code
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="bad magic"):
        read_idx(path)


def test_count_mismatch(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="5 images but .* 4 labels"):
        read_data_folder(tmp_path, "train")


def test_wrong_image_size(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(DataError, match="32x32"):
        read_idx(tmp_path / "train-images-idx3-ubyte")


def test_corrupt_gzip(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(1, np.uint8))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        read_data_folder(tmp_path, "train")


def test_missing_files(tmp_path):
    with pytest.raises(DataError, match="no train-images"):
        read_data_folder(tmp_path, "train")
    with pytest.raises(DataError, match="not a folder"):
        read_data_folder(tmp_path / "nope", "train")


def _csv(path, rows, header=True):
    lines = (["label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))] if header else [])
    lines += [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def test_csv_reader(tmp_path, mnist_test):
    rows = [[int(lbl)] + img.ravel().tolist() for img, lbl in zip(mnist_test.images[:7], mnist_test.labels[:7])]
    _csv(tmp_path / "mnist_test.csv", rows)
    ds = read_data_folder(tmp_path, "test")
    np.testing.assert_array_equal(ds.images, mnist_test.images[:7])
    np.testing.assert_array_equal(ds.labels, mnist_test.labels[:7])
    _csv(tmp_path / "noheader.csv", rows, header=False)
    np.testing.assert_array_equal(read_csv(tmp_path / "noheader.csv").labels, mnist_test.labels[:7])


@pytest.mark.parametrize("row, message", [
    ([3] + [0] * 783, "783 pixel values"),
    ([3] + [0] * 785, "785 pixel values"),
    ([11] + [0] * 784, "outside"),
    ([1] + [256] + [0] * 783, "outside"),
    (["x"] + [0] * 784, "not an integer"),
])
def test_csv_errors(tmp_path, row, message):
    _csv(tmp_path / "bad.csv", [[1] + [0] * 784, row])
    with pytest.raises(DataError, match=f"bad.csv: line 3 .*{message}|bad.csv: line 3 has a value {message}"):
        read_csv(tmp_path / "bad.csv")


def test_npz_reader(tmp_path, mnist_test):
    np.savez(tmp_path / "mnist.npz", x_train=mnist_test.images[:20], y_train=mnist_test.labels[:20],
             x_test=mnist_test.images[20:30], y_test=mnist_test.labels[20:30])
    assert len(read_data_folder(tmp_path, "train")) == 20
    np.testing.assert_array_equal(read_data_folder(tmp_path, "test").images, mnist_test.images[20:30])
    np.savez(tmp_path / "bad.npz", x_train=mnist_test.images[:20])
    with pytest.raises(DataError, match="no array"):
        read_npz(tmp_path / "bad.npz", "train")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="junk.npz"):
        read_npz(tmp_path / "junk.npz", "train")


def test_bundled_sample_is_real_mnist_training_data(mnist_train):
    train, test = load_dataset("mnist-sample", "train"), load_dataset("mnist-sample", "test")
    assert len(train) + len(test) <= 10000 and len(test) == 1000
    # drawn only from the 10k training subset, in order
    np.testing.assert_array_equal(train.images, mnist_train.images[:len(train)])
    np.testing.assert_array_equal(test.labels, mnist_train.labels[len(train):len(train) + 1000])


def test_load_dataset_from_dir_and_errors():
    assert len(load_dataset("mnist", "test", MNIST_10K)) == 10000
    with pytest.raises(Exception, match="unknown dataset"):
        load_dataset("cifar", "train")
    with pytest.raises(Exception, match="unknown split"):
        load_dataset("mnist", "val", MNIST_10K)


def test_offline_download_error_mentions_data_dir(tmp_path, monkeypatch):
    import pooch

    monkeypatch.setenv("MOBILE_LENET_CACHE", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(pooch, "retrieve", offline)
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("mnist", "train")


def test_download_uses_cache_and_checksum(tmp_path, monkeypatch):
    """A cached file with the right md5 is used without any network access; a wrong one is fetched again."""
    import hashlib

    import pooch

    from mobile_lenet.model import data

    monkeypatch.setenv("MOBILE_LENET_CACHE", str(tmp_path))
    folder = tmp_path / "mnist"
    write_idx_set(folder, np.zeros((2, 28, 28), np.uint8), np.array([1, 2], np.uint8), gz=True)
    write_idx_set(folder, np.zeros((1, 28, 28), np.uint8), np.array([3], np.uint8), prefix="t10k", gz=True)
    fake = {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in folder.iterdir()}
    monkeypatch.setitem(data.DOWNLOADS, "mnist", {"mirrors": ["http://mirror.invalid/"], "md5": fake})
    calls = []
    monkeypatch.setattr(pooch, "retrieve", lambda *a, **k: calls.append(a))
    assert load_dataset("mnist", "train").labels.tolist() == [1, 2]
    assert calls == []
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"tampered"))
    load_dataset("mnist", "train")
    assert [a[0] for a in calls] == ["http://mirror.invalid/t10k-labels-idx1-ubyte.gz"]


def test_validation_split_is_disjoint_and_seeded(mnist_train):
    a_train, a_val = split_validation(mnist_train, 0.1, seed=0)
    b_train, b_val = split_validation(mnist_train, 0.1, seed=0)
    assert len(a_val) == 1000 and len(a_train) == 9000
    np.testing.assert_array_equal(a_val.labels, b_val.labels)
    c_train, c_val = split_validation(mnist_train, 0.1, seed=1)
    assert not np.array_equal(a_val.images, c_val.images)


def test_input_scaling():
    x = to_tensor_input(np.array([[[0, 255] + [51] * 782]], np.uint8).reshape(1, 28, 28))
    assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32
    assert x[0, 0, 0, 0] == 0 and x[0, 0, 0, 1] == 1 and x[0, 0, 0, 2] == np.float32(51) / np.float32(255)


# ------------------------------------------------------------------------------------------------ label range
def _digits_with_last_label(label: int, dtype=np.uint8) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((3, 28, 28), np.uint8), np.array([0, 5, label], dtype)


@pytest.mark.parametrize("label, ok", [(9, True), (10, False), (255, False)])
def test_idx_label_range_boundary(tmp_path, label, ok):
    images, labels = _digits_with_last_label(label)
    folder = write_idx_set(tmp_path / "d", images, labels)
    if ok:
        assert read_data_folder(folder, "train").labels.tolist() == [0, 5, 9]
    else:
        with pytest.raises(DataError, match=f"label {label} out of range 0..9"):
            read_data_folder(folder, "train")


@pytest.mark.parametrize("label, ok", [(9, True), (0, True), (10, False), (-1, False)])
def test_npz_label_range_boundary(tmp_path, label, ok):
    images, labels = _digits_with_last_label(label, np.int64)
    np.savez(tmp_path / "mnist.npz", x_train=images, y_train=labels, x_test=images, y_test=labels)
    if ok:
        assert read_npz(tmp_path / "mnist.npz", "train").labels.tolist() == [0, 5, label]
    else:
        with pytest.raises(DataError, match="mnist.npz: label.* out of range 0..9"):
            read_npz(tmp_path / "mnist.npz", "train")


@pytest.mark.parametrize("label, ok", [(9, True), (10, False), (-1, False)])
def test_csv_label_range_boundary(tmp_path, label, ok):
    _csv(tmp_path / "d.csv", [[0] + [0] * 784, [label] + [0] * 784])
    if ok:
        assert read_csv(tmp_path / "d.csv").labels.tolist() == [0, 9]
    else:
        with pytest.raises(DataError, match="d.csv: line 3 has a label outside 0..9"):
            read_csv(tmp_path / "d.csv")
