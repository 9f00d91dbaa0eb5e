"""MNIST-style preprocessing against what MNIST's own recipe promises: the digit fits a 20x20 box (aspect kept),
and its centre of mass sits at the centre of the 28x28 image."""

from __future__ import annotations

import numpy as np

from mobile_lenet.model.images import looks_dark_on_light, mnist_style


def centre_of_mass(image: np.ndarray) -> np.ndarray:
    rows, cols = np.indices(image.shape)
    weights = image.astype(np.float64)
    return np.array([(rows * weights).sum(), (cols * weights).sum()]) / weights.sum()


def random_blob(rng: np.random.Generator) -> np.ndarray:
    """A lopsided 'digit' of random size and place on a large canvas."""
    canvas = np.zeros((200, 160), np.uint8)
    h, w = rng.integers(40, 150), rng.integers(20, 120)
    y, x = rng.integers(0, 200 - h), rng.integers(0, 160 - w)
    blob = (rng.random((h, w)) < 0.3) * 255
    blob[:, : max(1, w // 4)] = 255  # a heavy left stroke: the centre of mass is not the box's centre
    canvas[y:y + h, x:x + w] = blob
    return canvas


def test_mnist_style_fits_a_20_pixel_box_and_centres_the_mass():
    rng = np.random.default_rng(0)
    offsets = []
    for _ in range(30):
        out = mnist_style(random_blob(rng))
        ys, xs = np.nonzero(out)
        assert out.shape == (28, 28) and out.dtype == np.uint8
        assert max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == 20  # the longer side fills the box
        offsets.append(centre_of_mass(out) - 13.5)
    offsets = np.array(offsets)
    # placement is to the nearest pixel: each offset within about half a pixel, and no bias on average
    assert np.abs(offsets).max() < 0.75
    assert np.abs(offsets.mean(axis=0)).max() < 0.2, offsets.mean(axis=0)


def test_blank_and_dark_on_light():
    assert not mnist_style(np.zeros((50, 50), np.uint8)).any()
    paper = np.full((30, 30), 230, np.uint8)
    paper[10:20, 12:15] = 10
    assert looks_dark_on_light(paper) and not looks_dark_on_light(255 - paper)
    border = np.zeros((30, 30), np.uint8)
    border[0, :] = 255  # a light top edge alone (a quarter of the border) is not light paper
    assert not looks_dark_on_light(border)
