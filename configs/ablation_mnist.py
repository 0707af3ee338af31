"""The full-size ablation for accelerators: the MNIST network and budget, every row, long NFE curves.

    python -m dale_langevin.main --mode=ablate --config=configs/ablation_mnist.py --workdir=gs://BUCKET/ablation_mnist

Seven trainings of 100k steps each (the published runs use 100k-300k), 10,000 samples per row (the
usual FID sample size) for each of three sampling seeds, curves up to the published 1,000 levels; the
grid of configs/ablation_cpu.py, whose matched-SNR sigma_max comes from the embedded MNIST digits (a
sample of the same training set).
"""

import os

from ml_collections import ConfigDict

from dale_langevin.pipeline.config import default_config, load_config_file


def get_config():
    """The MNIST config with an ablation block."""
    grid = load_config_file(os.path.join(os.path.dirname(__file__), "ablation_cpu.py")).ablation  # by path
    c = default_config()
    c.data.dataset = "mnist"
    c.training.n_iters = 100_000
    for method in ("dale_langevin", "sign_agnostic", "euler_maruyama"):
        c.sampling[method].denoise_steps = 10
    c.sampling.batch_size = 500
    c.eval.classifier_epochs = 5

    c.ablation = ConfigDict()
    c.ablation.n_steps = 1000
    c.ablation.rows = "all"
    c.ablation.curves = grid.curves
    c.ablation.nfe_steps = (20, 50, 100, 200, 500)
    c.ablation.n_samples = 10_000
    c.ablation.seeds = (0, 1, 2)
    c.ablation.trainings = grid.trainings
    c.ablation.grid = grid.grid
    return c
