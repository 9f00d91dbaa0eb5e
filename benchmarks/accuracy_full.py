"""Part accuracy-full: the default training recipe on the full official MNIST (60,000 training images), 3 seeds.

The README's headline number. Long (each run trains on six times the images of the 10k subset), so it runs
only when named: ``python -m benchmarks --only accuracy-full``. Runs go as many at once as the benchmark has
threads, one thread each, like the accuracy part; a finished run's result is kept in its folder, so an
interrupted benchmark resumes with the runs not yet done. The recipe's goal is a run under 45 minutes on a
2-core machine, and the table says how long each run took under that load.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace

from .accuracy import QUICK, SEEDS, summary, train_and_score
from .common import Options, not_available

TIME_GOAL_MINUTES = 45


def run(options: Options) -> dict:
    """Train the default recipe on all of MNIST over the seeds; score each run's best.pt on the test set."""
    from mobile_lenet.model.training import TrainConfig

    defaults = TrainConfig()
    if not options.full_mnist_dir.is_dir():  # say so instead of a number
        return {"recipe": asdict(defaults), "mnist_full": not_available(f"no {options.full_mnist_dir}")}
    quick = options.quick
    data = {"name": "mnist", "data_dir": str(options.full_mnist_dir),
            "train_images": QUICK["train_images"] if quick else None,
            "test_images": QUICK["test_images"] if quick else None}
    epochs = QUICK["epochs"] if quick else defaults.epochs
    seeds = QUICK["seeds"] if quick else SEEDS
    jobs = max(1, min(options.threads, len(seeds)))
    options.log(f"  accuracy-full: MNIST 60k, seeds {', '.join(map(str, seeds))} ({epochs} epochs, {jobs} at a time) ...")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(train_and_score, replace(defaults, epochs=epochs, seed=seed), data,
                               options.work_dir / f"mnist60k-seed{seed}") for seed in seeds]
        runs = [future.result() for future in futures]
    for one in runs:
        options.log(f"    seed {one['seed']}: test accuracy {one['test_accuracy']:.4f} in {one['seconds'] / 60:.1f} min")
    return {"recipe": asdict(defaults), "parallel_runs": jobs, "time_goal_minutes": TIME_GOAL_MINUTES,
            "mnist_full": summary("MNIST (full, 60,000 training images)", runs, epochs, defaults)}
