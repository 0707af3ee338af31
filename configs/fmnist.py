"""Fashion-MNIST with the published settings (Dale-Langevin: delta 5.86e-4, L = 1, anneal 0.995).

    python -m dale_langevin.main --config=configs/fmnist.py --workdir=gs://BUCKET/runs/fmnist
    # sign-agnostic sampler as published: add
    #   --config.sampling.method=sign_agnostic --config.sampling.step_size=1.468e-3
    #   --config.sampling.n_inner=3 --config.sampling.noise_decay=0.9995
"""

from dale_langevin.config import default_config


def get_config():
    """Fashion-MNIST: 28x28x1."""
    c = default_config()
    c.data.dataset = "fashion_mnist"
    c.sampling.step_size = 5.86e-4
    c.sampling.noise_decay = 0.995
    return c
