"""The paper's Fashion-MNIST row, sign-agnostic sampler: delta 0.001468, L 3, anneal 0.9995.

NCSNv2-deeper, score parametrisation (h = x s), the published log-normal prior; 3000 network evaluations per sample at
1000 levels. Settings and their sources: docs/reproduction.md; builder: dale_langevin.pipeline.paper.

    W=gs://BUCKET/paper/fashion_mnist_sign_agnostic
    python -m dale_langevin.main --config=configs/paper/fashion_mnist_sign_agnostic.py --workdir=$W
    python -m dale_langevin.main --config=configs/paper/fashion_mnist_sign_agnostic.py --workdir=$W --mode=eval
    # the CPU-sized version (embedded digits, narrow network, 1,200 steps):
    python -m dale_langevin.main --config=configs/paper/fashion_mnist_sign_agnostic.py:cpu --workdir=/tmp/$(basename $W)

Budget (python -m benchmarks.paper_budget: XLA-counted FLOPs at an assumed 25% of peak, estimates):
training 1.39 EFLOP, about 3.1 h on one H100 or 1.4 h on one TPU v4 host;
the 50,000-sample evaluation at 3000 NFE 1.81 EFLOP, about 4.1 h / 1.8 h.
"""

from dale_langevin.pipeline import paper


def get_config(size: str = "full"):
    """``size``: ``full`` (the authors' settings) or ``cpu``."""
    return paper.config("fashion_mnist", "sign_agnostic", size=size)
