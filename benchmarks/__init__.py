"""Mobile-LeNet benchmarks, in one rerunnable command: ``python -m benchmarks [--quick] [--only PART]``.

Three parts, each a module with a ``run(options) -> dict`` function:

* ``accuracy``: test accuracy of the default training recipe (3 seeds on the 10k MNIST subset, full
  Fashion-MNIST) and of the upstream published weights;
* ``training``: training speed and accuracy of our trainer against the upstream stack (Keras 3 on the
  PyTorch backend), each in its own subprocess with the same thread count;
* ``inference``: images/second and latency of every inference engine, against the machine's measured peak.

Results go to ``benchmarks/results.json`` (merged part by part, so ``--only`` reruns one part and keeps
the others) and ``BENCHMARKS.md`` is regenerated from them; every number in it comes from a run.
"""
