"""Kuzushiji-MNIST with the published settings.

    python -m dale_langevin.main --config=configs/kmnist.py --workdir=gs://BUCKET/runs/kmnist
"""

from dale_langevin.config import default_config


def get_config():
    """Kuzushiji-MNIST: 28x28x1; sampler extras as published for Fashion-MNIST."""
    c = default_config()
    c.data.dataset = "kmnist"
    c.sampling.step_size = 5.86e-4
    c.sampling.noise_decay = 0.995
    return c
