"""Turning ordinary pictures of digits into MNIST-style 28x28 inputs.

MNIST digits were made by scaling each digit to fit a 20x20 box (keeping its aspect ratio) and then
placing it in a 28x28 image so that its centre of mass sits at the centre. ``mnist_style`` does the same,
so a photo, a scan or a drawing on a canvas looks to the network like the digits it was trained on.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from mobile_lenet.errors import UserError
from mobile_lenet.files import check_readable_file

MAX_IMAGE_SIDE = 4096  # checked before decoding, so a small file cannot unpack into gigabytes
INNER_BOX = 20  # MNIST: the digit fits in 20x20 ...
SIZE = 28  # ... inside a 28x28 image, centred by centre of mass


def mnist_style(gray: np.ndarray) -> np.ndarray:
    """White-on-black grayscale image of any size -> 28x28 uint8, MNIST-normalized as described above."""
    gray = np.asarray(gray, dtype=np.uint8)
    ys, xs = np.nonzero(gray > 0)
    if len(ys) == 0:
        return np.zeros((SIZE, SIZE), np.uint8)
    crop = gray[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape
    scale = INNER_BOX / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    small = np.asarray(Image.fromarray(crop).resize((new_w, new_h), Image.LANCZOS), dtype=np.float64)
    small = np.clip(small, 0, 255)
    total = small.sum()
    if total == 0:
        return np.zeros((SIZE, SIZE), np.uint8)
    cy = (small.sum(axis=1) * np.arange(new_h)).sum() / total
    cx = (small.sum(axis=0) * np.arange(new_w)).sum() / total
    top = int(round(SIZE / 2 - 0.5 - cy))
    left = int(round(SIZE / 2 - 0.5 - cx))
    out = np.zeros((SIZE, SIZE), np.float64)
    # paste with clipping, in case the centre-of-mass shift pushes an edge outside the frame
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(SIZE, top + new_h), min(SIZE, left + new_w)
    out[y0:y1, x0:x1] = small[y0 - top:y1 - top, x0 - left:x1 - left]
    return np.round(out).astype(np.uint8)


def resize_digits(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 digits (N, H, W) -> (N, size, size) uint8: how every image reaches a family member whose input is
    not 28x28 (training, evaluation, every engine, the simulators), so all of them see the same pixels. PIL's
    bilinear filter widens with the scale factor, so shrinking averages pixels rather than skipping them."""
    images = np.asarray(images, dtype=np.uint8)
    if images.shape[1:] == (size, size):
        return images
    return np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.uint8)
                     for image in images]) if len(images) else np.zeros((0, size, size), np.uint8)


def looks_dark_on_light(gray: np.ndarray) -> bool:
    """True if the border of the picture is light, i.e. a dark digit on a light background."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return float(border.mean()) > 127


class NonFiniteImage(ValueError):
    """A floating-point image (a TIFF of mode F, say) holding NaN or infinite pixels: there is no digit to read."""

    def __init__(self):
        super().__init__("image has NaN or infinite pixel values")


def to_gray(img: Image.Image) -> np.ndarray:
    """A PIL image -> grayscale uint8; transparent pixels count as background (flattened onto black), so a
    white digit drawn on a transparent canvas stays a white digit on black. NonFiniteImage for a float image
    with NaN or infinite pixels (PIL would turn NaN into 0 and infinity into 255 without a word)."""
    if img.mode == "F" and not np.isfinite(np.asarray(img)).all():
        raise NonFiniteImage()
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        img = Image.alpha_composite(Image.new("RGBA", img.size, "black"), img.convert("RGBA"))
    return np.asarray(img.convert("L"), dtype=np.uint8)


def load_digit(path: str | os.PathLike, invert: str = "auto") -> np.ndarray:
    """Read a PNG/JPEG (any size, colour or not) as an MNIST-style 28x28 uint8 image.

    ``invert``: "auto" (inverts when the background is light), "yes" (dark digit on light paper) or "no".
    A 28x28 image is taken as is (only inverted if asked), as it is presumably an MNIST digit already.
    """
    if invert not in ("auto", "yes", "no"):
        raise UserError(f"invert must be auto, yes or no, not {invert!r}")
    check_readable_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refused below, not printed
            with Image.open(path) as img:
                width, height = img.size
                if max(width, height) > MAX_IMAGE_SIDE:
                    raise UserError(f"{path}: image is {width}x{height}; at most {MAX_IMAGE_SIDE} pixels a side")
                gray = to_gray(img)
    except NonFiniteImage as e:
        raise UserError(f"{path}: {e}") from None
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not an image") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        raise UserError(f"{path}: not a readable image ({type(e).__name__})") from None
    if gray.ndim != 2 or gray.size == 0:
        raise UserError(f"{path}: not a readable image (empty)")
    if invert == "yes" or (invert == "auto" and looks_dark_on_light(gray)):
        gray = 255 - gray
    if gray.shape == (SIZE, SIZE):
        return gray.copy()
    return mnist_style(gray)
