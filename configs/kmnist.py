"""Kuzushiji-MNIST with the published settings.

python -m dale_langevin.main --config=configs/kmnist.py --workdir=gs://BUCKET/runs/kmnist
"""

from dale_langevin.pipeline.config import default_config
from dale_langevin.samplers import published


def get_config():
    """Kuzushiji-MNIST: 28x28x1; our U-Net, with the published KMNIST sampler settings."""
    c = default_config()
    c.data.dataset = "kmnist"
    for method in ("dale_langevin", "sign_agnostic"):
        c.sampling[method].update(published.settings("kmnist", method))
    return c
