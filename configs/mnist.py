"""MNIST with the published settings.

    python -m dale_langevin.main --config=configs/mnist.py --workdir=gs://BUCKET/runs/mnist
"""

from dale_langevin.config import default_config


def get_config():
    """MNIST: 28x28x1, Dale-Langevin sampler with the published Fashion-MNIST extras (none published for MNIST)."""
    c = default_config()
    c.data.dataset = "mnist"
    c.sampling.step_size = 5.86e-4
    c.sampling.noise_decay = 0.995
    return c
