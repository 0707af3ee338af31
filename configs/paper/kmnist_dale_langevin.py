"""The paper's Kuzushiji-MNIST row, Dale-Langevin sampler: delta 0.0002113, L 3, anneal 0.995.

NCSNv2-deeper, score parametrisation (h = x s), the published log-normal prior; 3000 network evaluations per sample at
1000 levels. Settings and their sources: docs/reproduction.md; builder: dale_langevin.pipeline.paper.

    W=gs://BUCKET/paper/kmnist_dale_langevin
    python -m dale_langevin.main --config=configs/paper/kmnist_dale_langevin.py --workdir=$W
    python -m dale_langevin.main --config=configs/paper/kmnist_dale_langevin.py --workdir=$W --mode=eval
    # the CPU-sized version (embedded digits, narrow network, 1,200 steps):
    python -m dale_langevin.main --config=configs/paper/kmnist_dale_langevin.py:cpu --workdir=/tmp/$(basename $W)

Budget (python -m benchmarks.paper_budget: XLA-counted FLOPs at an assumed 25% of peak, estimates):
training 1.39 EFLOP, about 3.1 h on one H100 or 1.4 h on one TPU v4 host;
the 50,000-sample evaluation at 3000 NFE 1.81 EFLOP, about 4.1 h / 1.8 h.
"""

from dale_langevin.pipeline import paper


def get_config(size: str = "full"):
    """``size``: ``full`` (the authors' settings) or ``cpu``."""
    return paper.config("kmnist", "dale_langevin", size=size)
