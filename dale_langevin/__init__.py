"""dale-langevin: multiplicative score-based diffusion (GBM forward process, M-DSM, Dale-Langevin sampling).

Core modules (pure JAX): :mod:`~dale_langevin.gbm` (forward process and log-normal kernel),
:mod:`~dale_langevin.losses` (M-DSM), :mod:`~dale_langevin.samplers` (reverse updates and ``sample``),
:mod:`~dale_langevin.additive` (VE/VP counterparts), :mod:`~dale_langevin.analytic` (closed-form test bed).
"""

from dale_langevin.additive import VESDE, VPSDE
from dale_langevin.analytic import LogNormalMixture, recovery_stats
from dale_langevin.gbm import GBM, fit_prior
from dale_langevin.losses import dsm_loss, dsm_per_example, mdsm_loss, mdsm_per_example, mesm_loss
from dale_langevin.priors import GaussianPrior, LogNormalPrior
from dale_langevin.process import WEIGHTINGS, DiffusionProcess, get_process
from dale_langevin.samplers import dale_langevin_update, sample, sign_agnostic_update

__version__ = "0.1.0"
