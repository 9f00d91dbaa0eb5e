"""Mobile-LeNet benchmarks, in one rerunnable command: ``python -m benchmarks [--quick] [--only PART]``.

Six parts, each a module with a ``run(options) -> dict`` function. Run by default:

* ``accuracy``: test accuracy of the default training recipe (3 seeds on the 10k MNIST subset, full
  Fashion-MNIST) and of the upstream published weights;
* ``training``: training speed and accuracy of our trainer against the upstream stack (Keras 3 on the
  PyTorch backend), each in its own subprocess with the same thread count;
* ``inference``: images/second and latency of every inference engine, against the machine's measured peak;
* ``microcontrollers``: the firmware in QEMU and simavr (``mobile-lenet simulate``).

Long, run only when named (``--only accuracy-full,ablation``):

* ``accuracy-full`` (module ``accuracy_full``): the default recipe on all 60,000 MNIST training images, 3 seeds;
* ``ablation``: the recipe with each lever taken out, scored on held-out training images (never the test set);
* ``ablation-small`` (module ``ablation_small``): recipes for a training set of the bundled sample's size.

Results go to ``benchmarks/results.json`` (merged part by part, so ``--only`` reruns one part and keeps
the others) and ``BENCHMARKS.md`` is regenerated from them; every number in it comes from a run.
"""
