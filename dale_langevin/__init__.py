"""dale-langevin: multiplicative score-based diffusion (GBM forward process, M-DSM, Dale-Langevin sampling).

The package by layer (each imports only the layers above it in this list):

* :mod:`~dale_langevin.processes` -- forward processes and their math (GBM, VE/VP, priors, a
  closed-form log-normal mixture); :mod:`~dale_langevin.losses` -- (M-)DSM and the network
  parametrisation; :mod:`~dale_langevin.samplers` -- every reverse sampler behind one registry.
* :mod:`~dale_langevin.nets` -- the U-Net; :mod:`~dale_langevin.cpu` -- XLA:CPU tuning.
* :mod:`~dale_langevin.pipeline` -- config schema, data, parallelism, work directory, training, sampling.
* :mod:`~dale_langevin.evaluation` -- metrics, classifier and Inception features, ablations, reports.
* :mod:`~dale_langevin.main` -- the command line.

The short names below are the math layer's; they import JAX but no TensorFlow, Flax or Orbax.
"""

from dale_langevin.losses import dsm_loss, dsm_per_example, mesm_loss, network_score_fn
from dale_langevin.processes import (
    GBM,
    PROCESSES,
    VESDE,
    VPSDE,
    WEIGHTINGS,
    DiffusionProcess,
    GaussianPrior,
    LogNormalPrior,
    LogVESDE,
    ScoreFn,
    fit_prior,
    get_process,
)
from dale_langevin.processes.analytic import GaussianMixture, LogNormalMixture, recovery_stats
from dale_langevin.samplers import dale_langevin_update, network_evaluations, register, sample, sign_agnostic_update

__version__ = "0.1.0"

__all__ = [
    "GBM",
    "PROCESSES",
    "VESDE",
    "VPSDE",
    "WEIGHTINGS",
    "DiffusionProcess",
    "GaussianMixture",
    "GaussianPrior",
    "LogNormalMixture",
    "LogNormalPrior",
    "LogVESDE",
    "ScoreFn",
    "dale_langevin_update",
    "dsm_loss",
    "dsm_per_example",
    "fit_prior",
    "get_process",
    "mesm_loss",
    "network_evaluations",
    "network_score_fn",
    "recovery_stats",
    "register",
    "sample",
    "sign_agnostic_update",
]
