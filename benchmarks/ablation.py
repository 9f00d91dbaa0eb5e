"""Part ablation: what each lever of the training recipe gives, on validation images, never on the test set.

Every variant trains on the 10k MNIST training subset (as the accuracy part does, seed 0) and is scored on
10,000 other official training images, numbers 50,000 to 59,999 of the full set, which no run trains on.
Rows: the default recipe, the default with one lever taken out, levers tried and not kept, and the recipe
before this one. Runs only when named: ``python -m benchmarks --only ablation`` (it needs ``mnist-60k/``).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace

from .accuracy import QUICK, train_and_score
from .common import Options, not_available

HOLDOUT = (50_000, 60_000)  # indices into the full training set; the 10k subset is its first 10,000
SEED = 0
# (label, the settings that differ from TrainConfig()): every lever the default uses is taken out once.
VARIANTS = (
    ("default recipe", {}),
    ("without augmentation", {"augment": False}),
    ("with weight averaging, EMA decay 0.999 (not kept)", {"ema_decay": 0.999}),
    ("with elastic distortions, alpha 20 px (not kept)", {"elastic": 20.0}),
    ("with label smoothing 0.1 (not kept)", {"label_smoothing": 0.1}),
    ("twice the epochs, 120 (not kept)", {"epochs": 120}),
    ("recipe before issue 14: batch 64, peak lr 0.01", {"batch_size": 64, "lr": 0.01}),
)


def run_name(overrides: dict) -> str:
    """A variant's run folder name, from its settings (so adding a variant keeps the others' finished runs)."""
    return "-".join(f"{key}={value}" for key, value in sorted(overrides.items())) or "default"


def run(options: Options) -> dict:
    """Train every variant once and score it on the held-out training images."""
    from mobile_lenet.model.training import TrainConfig

    defaults = TrainConfig()
    if not options.full_mnist_dir.is_dir():
        return {"recipe": asdict(defaults), "variants": not_available(f"no {options.full_mnist_dir}")}
    quick = options.quick
    data = {"name": "mnist", "data_dir": str(options.mnist_dir),
            "train_images": QUICK["train_images"] if quick else None,
            "holdout": {"data_dir": str(options.full_mnist_dir), "start": HOLDOUT[0],
                        "stop": HOLDOUT[0] + QUICK["test_images"] if quick else HOLDOUT[1]}}
    configs = []
    for label, overrides in VARIANTS:
        config = replace(defaults, seed=SEED, **overrides)
        if label != "default recipe" and config == replace(defaults, seed=SEED):
            continue  # the default has this setting (now): the row would repeat the default's
        if quick:
            config = replace(config, epochs=QUICK["epochs"])
        configs.append((label, overrides, config))
    jobs = max(1, options.threads)
    options.log(f"  ablation: {len(configs)} variants on the 10k subset, {jobs} at a time ...")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(train_and_score, config, data, options.work_dir / f"ablation-{run_name(overrides)}")
                   for _, overrides, config in configs]
        rows = [{"label": label, "changes": overrides, **future.result()}
                for (label, overrides, _), future in zip(configs, futures)]
    for row in rows:
        options.log(f"    {row['label']}: validation accuracy {row['holdout_accuracy']:.4f}")
    return {"recipe": asdict(defaults), "seed": SEED, "holdout": list(HOLDOUT), "parallel_runs": jobs,
            "variants": rows}
