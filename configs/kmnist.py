"""Kuzushiji-MNIST with the published settings.

python -m dale_langevin.main --config=configs/kmnist.py --workdir=gs://BUCKET/runs/kmnist
"""

from dale_langevin.pipeline.config import default_config
from dale_langevin.samplers import published


def get_config():
    """Kuzushiji-MNIST: 28x28x1; sampler extras as published for Fashion-MNIST."""
    c = default_config()
    c.data.dataset = "kmnist"
    for method in ("dale_langevin", "sign_agnostic"):
        c.sampling[method].update(published.settings("fashion_mnist", method))
    return c
