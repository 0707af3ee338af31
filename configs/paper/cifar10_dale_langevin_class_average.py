"""The paper's CIFAR-10 row, Dale-Langevin sampler from class averages: delta 0.0002, L 4, anneal 0.9995, 25 noise-free final steps.

NCSN++ deep, score parametrisation (h = x s), class means pushed to T by the authors' rule; 4025 network evaluations per sample at
1000 levels. Settings and their sources: docs/reproduction.md; builder: dale_langevin.pipeline.paper.

    W=gs://BUCKET/paper/cifar10_dale_langevin_class_average
    python -m dale_langevin.main --config=configs/paper/cifar10_dale_langevin_class_average.py --workdir=$W
    python -m dale_langevin.main --config=configs/paper/cifar10_dale_langevin_class_average.py --workdir=$W --mode=eval
    # the CPU-sized version (embedded digits, narrow network, 1,200 steps):
    python -m dale_langevin.main --config=configs/paper/cifar10_dale_langevin_class_average.py:cpu --workdir=/tmp/$(basename $W)

Budget (python -m benchmarks.paper_budget: XLA-counted FLOPs at an assumed 25% of peak, estimates):
training 17.34 EFLOP, about 38.9 h on one H100 or 17.5 h on one TPU v4 host;
the 50,000-sample evaluation at 4025 NFE 6.98 EFLOP, about 15.7 h / 7.1 h.
"""

from dale_langevin.pipeline import paper


def get_config(size: str = "full"):
    """``size``: ``full`` (the authors' settings) or ``cpu``."""
    return paper.config("cifar10", "dale_langevin", class_average=True, size=size)
