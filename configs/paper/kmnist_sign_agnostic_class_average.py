"""The paper's Kuzushiji-MNIST row, sign-agnostic sampler from class averages: delta 0.000336, L 2, anneal 1.

NCSNv2-deeper, score parametrisation (h = x s), class means pushed to T by the authors' rule; 2000 network evaluations per sample at
1000 levels. Settings and their sources: docs/reproduction.md; builder: dale_langevin.pipeline.paper.

    W=gs://BUCKET/paper/kmnist_sign_agnostic_class_average
    python -m dale_langevin.main --config=configs/paper/kmnist_sign_agnostic_class_average.py --workdir=$W
    python -m dale_langevin.main --config=configs/paper/kmnist_sign_agnostic_class_average.py --workdir=$W --mode=eval
    # the CPU-sized version (embedded digits, narrow network, 1,200 steps):
    python -m dale_langevin.main --config=configs/paper/kmnist_sign_agnostic_class_average.py:cpu --workdir=/tmp/$(basename $W)

Budget (python -m benchmarks.paper_budget: XLA-counted FLOPs at an assumed 25% of peak, estimates):
training 1.39 EFLOP, about 3.1 h on one H100 or 1.4 h on one TPU v4 host;
the 50,000-sample evaluation at 2000 NFE 1.21 EFLOP, about 2.7 h / 1.2 h.
"""

from dale_langevin.pipeline import paper


def get_config(size: str = "full"):
    """``size``: ``full`` (the authors' settings) or ``cpu``."""
    return paper.config("kmnist", "sign_agnostic", class_average=True, size=size)
