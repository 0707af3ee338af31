"""MNIST with the published settings.

python -m dale_langevin.main --config=configs/mnist.py --workdir=gs://BUCKET/runs/mnist
"""

from dale_langevin.pipeline.config import default_config
from dale_langevin.samplers import published


def get_config():
    """MNIST: 28x28x1, Dale-Langevin sampler with the published Fashion-MNIST extras (none published for MNIST)."""
    c = default_config()
    c.data.dataset = "mnist"
    for method in ("dale_langevin", "sign_agnostic"):
        c.sampling[method].update(published.settings("fashion_mnist", method))
    return c
