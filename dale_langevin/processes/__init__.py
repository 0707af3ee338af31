"""Forward processes and their math: GBM (multiplicative), VE/VP (additive), priors, a closed-form test bed.

:data:`PROCESSES` is the registry of process classes by config name; ``config.process.<name>``
holds each one's constructor arguments. Adding a process: a frozen dataclass implementing
:class:`~dale_langevin.processes.base.DiffusionProcess` (with a ``name``), one entry here, and the
samplers that support it name it in their registration.
"""

from __future__ import annotations

from dale_langevin.checks import check_choice
from dale_langevin.processes.additive import VESDE, VPSDE, LogVESDE
from dale_langevin.processes.base import WEIGHTINGS, AdditiveProcess, DiffusionProcess, MultiplicativeProcess, ScoreFn
from dale_langevin.processes.gbm import GBM, fit_prior
from dale_langevin.processes.priors import GaussianPrior, LogNormalPrior

PROCESSES: dict[str, type] = {cls.name: cls for cls in (GBM, VESDE, VPSDE, LogVESDE)}


def get_process(name: str, **kwargs) -> DiffusionProcess:
    """Builds the process registered as ``name`` (``"gbm"``, ``"ve"``, ``"vp"``, ``"log_ve"``) with its keyword arguments."""
    check_choice(name, tuple(PROCESSES), "process name")
    return PROCESSES[name](**kwargs)


__all__ = [
    "PROCESSES",
    "WEIGHTINGS",
    "AdditiveProcess",
    "DiffusionProcess",
    "GBM",
    "GaussianPrior",
    "LogNormalPrior",
    "LogVESDE",
    "MultiplicativeProcess",
    "ScoreFn",
    "VESDE",
    "VPSDE",
    "fit_prior",
    "get_process",
]
