"""The paper's CIFAR-10 row, sign-agnostic sampler: delta 0.0001142, L 6, anneal 0.995.

NCSN++ deep, score parametrisation (h = x s), the published log-normal prior; 6000 network evaluations per sample at
1000 levels. Settings and their sources: docs/reproduction.md; builder: dale_langevin.pipeline.paper.

    W=gs://BUCKET/paper/cifar10_sign_agnostic
    python -m dale_langevin.main --config=configs/paper/cifar10_sign_agnostic.py --workdir=$W
    python -m dale_langevin.main --config=configs/paper/cifar10_sign_agnostic.py --workdir=$W --mode=eval
    # the CPU-sized version (embedded digits, narrow network, 1,200 steps):
    python -m dale_langevin.main --config=configs/paper/cifar10_sign_agnostic.py:cpu --workdir=/tmp/$(basename $W)

Budget (python -m benchmarks.paper_budget: XLA-counted FLOPs at an assumed 25% of peak, estimates):
training 17.34 EFLOP, about 38.9 h on one H100 or 17.5 h on one TPU v4 host;
the 50,000-sample evaluation at 6000 NFE 10.41 EFLOP, about 23.4 h / 10.5 h.
"""

from dale_langevin.pipeline import paper


def get_config(size: str = "full"):
    """``size``: ``full`` (the authors' settings) or ``cpu``."""
    return paper.config("cifar10", "sign_agnostic", size=size)
