"""Shared defaults: the published GBM and optimiser settings (``dale_langevin.pipeline.config.default_config``).

    python -m dale_langevin.main --config=configs/default.py --workdir=DIR   # MNIST, published settings

Every experiment config starts from these and overrides what differs; any field can be overridden
on the command line, e.g. ``--config.training.n_iters=2000``.
"""

from dale_langevin.pipeline.config import default_config


def get_config():
    """The default configuration."""
    return default_config()
