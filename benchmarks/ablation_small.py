"""Part ablation-small: the recipe for a small training set, the bundled sample's size, on validation images.

The main job falls back to the bundled sample offline: its training split is the first 3,000 official MNIST
training images (2,700 trained on, 300 held out for validation), far fewer than the 10k subset the default
recipe was tuned on; at batch 128 such a run takes a fifth of the optimizer steps a 10k run takes. Each row
trains on exactly those 3,000 images (three seeds: the seed also draws the validation split) and is scored on
the same 10,000 other training images as the ablation part (numbers 50,000 to 59,999); the sample's own
"test" split (images 3,000 to 3,999) and the official test set play no part.
Runs only when named: ``python -m benchmarks --only ablation-small`` (about 15 minutes on 2 cores).
"""

from __future__ import annotations

from .ablation import SEEDS, holdout, train_variants
from .accuracy import QUICK
from .common import Options

SMALL_TRAIN_IMAGES = 3_000  # the bundled sample's training split (mobile_lenet/assets/mnist_sample.npz)
VARIANTS = (
    ("default recipe", {}, SEEDS),
    ("recipe before issue 14: batch 64, peak lr 0.01", {"batch_size": 64, "lr": 0.01}, SEEDS),
    ("batch 32, peak lr 0.01", {"batch_size": 32, "lr": 0.01}, SEEDS),
    ("batch 32, peak lr 0.02", {"batch_size": 32, "lr": 0.02}, SEEDS),
    ("twice the epochs, 120", {"epochs": 120}, SEEDS),
)


def run(options: Options) -> dict:
    """Train every row on the first 3,000 training images (once per seed); score on images 50,000-59,999."""
    data = {"name": "mnist", "data_dir": str(options.full_mnist_dir),
            "train_images": QUICK["train_images"] if options.quick else SMALL_TRAIN_IMAGES,
            "holdout": holdout(options)}
    trained_on = f"the first {SMALL_TRAIN_IMAGES:,} MNIST training images (the bundled sample's training split)"
    return train_variants(options, VARIANTS, data, "ablation-small", trained_on)
