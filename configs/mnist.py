"""MNIST with the published settings.

python -m dale_langevin.main --config=configs/mnist.py --workdir=gs://BUCKET/runs/mnist
"""

from dale_langevin.pipeline.config import default_config
from dale_langevin.samplers import published


def get_config():
    """MNIST: 28x28x1, our U-Net, with the published MNIST sampler settings (configs/paper/ has the authors' network)."""
    c = default_config()
    c.data.dataset = "mnist"
    for method in ("dale_langevin", "sign_agnostic"):
        c.sampling[method].update(published.settings("mnist", method))
    return c
