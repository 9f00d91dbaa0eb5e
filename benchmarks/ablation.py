"""Part ablation: what each lever of the training recipe gives, on validation images, never on the test set.

Every variant trains on the 10k MNIST training subset (as the accuracy part does) and is scored on 10,000
other official training images, numbers 50,000 to 59,999 of the full set, which no run trains on. Rows: the
default recipe, the default with one lever taken out, levers tried and not kept (each stays an option of
``train``), and the recipe before this one. Most rows train once (seed 0); the default and distillation train
with three seeds: distillation costs 2.4x the training time, so it had to clear one seed's noise (about 0.1
points) to be kept, and did not.
Runs only when named: ``python -m benchmarks --only ablation`` (it needs ``mnist-60k/``).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace

from .accuracy import QUICK, train_and_score
from .common import Options, mean_and_spread, not_available, setting_text

HOLDOUT = (50_000, 60_000)  # indices into the full training set; the 10k subset is its first 10,000
SEEDS = (0, 1, 2)  # the rows that decide (the default, and the costliest lever) train once per seed
DISTILL_EPOCHS = 30  # the teacher's epochs in the distillation row
# (label, the settings that differ from TrainConfig(), seeds): every lever the default uses is taken out once.
VARIANTS = (
    ("default recipe", {}, SEEDS),
    ("without augmentation", {"augment": False}, (0,)),
    (f"with distillation from a 72,666-parameter teacher trained {DISTILL_EPOCHS} epochs first (not kept)",
     {"distill_epochs": DISTILL_EPOCHS}, SEEDS),
    ("with weight averaging, EMA decay 0.999 (not kept)", {"ema_decay": 0.999}, (0,)),
    ("with elastic distortions, alpha 20 px (not kept)", {"elastic": 20.0}, (0,)),
    ("with label smoothing 0.1 (not kept)", {"label_smoothing": 0.1}, (0,)),
    ("twice the epochs, 120 (not kept)", {"epochs": 120}, (0,)),
    ("recipe before issue 14: batch 64, peak lr 0.01", {"batch_size": 64, "lr": 0.01}, (0,)),
)


def run_name(overrides: dict, seed: int = 0) -> str:
    """A variant's run folder name, from its settings (so adding a variant keeps the others' finished runs)."""
    name = "-".join(f"{key}={setting_text(key, value, folder=True)}"
                    for key, value in sorted(overrides.items())) or "default"
    return name if seed == 0 else f"{name}-seed{seed}"


def run(options: Options) -> dict:
    """Train every variant (once per seed of its row) on the 10k subset; score it on the held-out images."""
    quick = options.quick
    data = {"name": "mnist", "data_dir": str(options.mnist_dir),
            "train_images": QUICK["train_images"] if quick else None, "holdout": holdout(options)}
    return train_variants(options, VARIANTS, data, "ablation", "the 10k MNIST training subset")


def holdout(options: Options) -> dict:
    """The validation images every ablation row is scored on: numbers 50,000 to 59,999 of the full set."""
    stop = HOLDOUT[0] + QUICK["test_images"] if options.quick else HOLDOUT[1]
    return {"data_dir": str(options.full_mnist_dir), "start": HOLDOUT[0], "stop": stop}


def train_variants(options: Options, variant_table: tuple, data: dict, prefix: str, trained_on: str) -> dict:
    """Train each (label, overrides, seeds) row of ``variant_table`` on ``data`` into ``{prefix}-{run name}``
    folders, two or more at a time, and collect each row's validation accuracy (mean over its seeds)."""
    from mobile_lenet.model.training import TrainConfig

    defaults = TrainConfig()
    if not options.full_mnist_dir.is_dir():
        return {"recipe": asdict(defaults), "variants": not_available(f"no {options.full_mnist_dir}")}
    quick = options.quick
    variants = []
    for label, overrides, seeds in variant_table:
        config = replace(defaults, **overrides)
        if overrides and config == defaults:
            continue  # the default has this setting (now): the row would repeat the default's
        if quick:
            config, seeds = replace(config, epochs=QUICK["epochs"]), seeds[:1]
            if config.distill_epochs:
                config = replace(config, distill_epochs=QUICK["epochs"])
        variants.append((label, overrides, [replace(config, seed=seed) for seed in seeds]))
    jobs = max(1, options.threads)
    count = sum(len(configs) for _, _, configs in variants)
    options.log(f"  {prefix}: {len(variants)} variants, {count} runs on {trained_on}, {jobs} at a time ...")
    # The costliest runs first, so that the pool's last minutes are not one long run alone.
    order = sorted(((config.distill_epochs, index, config) for index, (_, _, configs) in enumerate(variants)
                    for config in configs), key=lambda item: -item[0])
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {(index, config.seed): pool.submit(
                       train_and_score, config, data,
                       options.work_dir / f"{prefix}-{run_name(variants[index][1], config.seed)}")
                   for _, index, config in order}
        rows = []
        for index, (label, overrides, configs) in enumerate(variants):
            runs = [futures[index, config.seed].result() for config in configs]
            rows.append({"label": label, "changes": overrides, "runs": runs,
                         "holdout_images": runs[0]["holdout_images"],
                         "holdout_accuracy": mean_and_spread([one["holdout_accuracy"] for one in runs])["mean"],
                         "seconds": sum(one["seconds"] for one in runs) / len(runs)})
    for row in rows:
        options.log(f"    {row['label']}: validation accuracy {row['holdout_accuracy']:.4f} "
                    f"({len(row['runs'])} seed{'s' if len(row['runs']) > 1 else ''})")
    return {"recipe": asdict(defaults), "seeds": list(SEEDS), "holdout": list(HOLDOUT), "parallel_runs": jobs,
            "trained_on": trained_on, "variants": rows}
