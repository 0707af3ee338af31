"""Fashion-MNIST with the published settings (Dale-Langevin: delta 5.86e-4, L = 1, anneal 0.995; sign-agnostic:
delta 1.468e-3, L = 3, anneal 0.9995; both at 1000 levels).

    python -m dale_langevin.main --config=configs/fmnist.py --workdir=gs://BUCKET/runs/fmnist
    # the sign-agnostic sampler as published:
    python -m dale_langevin.main --config=configs/fmnist.py --workdir=gs://BUCKET/runs/fmnist --mode=sample \
      --config.sampling.method=sign_agnostic
"""

from dale_langevin.pipeline.config import default_config
from dale_langevin.samplers import published


def get_config():
    """Fashion-MNIST: 28x28x1."""
    c = default_config()
    c.data.dataset = "fashion_mnist"
    for method in ("dale_langevin", "sign_agnostic"):
        c.sampling[method].update(published.settings("fashion_mnist", method))
    return c
