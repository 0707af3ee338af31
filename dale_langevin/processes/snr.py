"""Signal-to-noise ratio at the terminal time, and the VE noise level that matches GBM's.

Every process here is additive in some domain: ``log x`` for GBM (``log X_t = log x0 + D(t) +
sqrt(v_t) eps``), ``x`` itself for VE, VP and log-space VE (``x_t = a_t x0 + std_t eps``). The rule of the
ablation (``configs/ablation_cpu.py``) compares processes in that domain:

    SNR(t) = a_t**2 Var[y0] / std_t**2,

where ``y0`` is the encoded training data in the process's Gaussian domain and ``Var`` is pooled over
examples and pixels (one number per dataset). GBM's signal coefficient is 1 and its noise variance
``v_t``. A VE process reaches GBM's terminal SNR when

    sigma_max**2 = sigma_min**2 + Var[encode_VE(u)] v_T / Var[log encode_GBM(u)]

(its kernel variance at T is ``sigma_max**2 - sigma_min**2``). For binary images the two variances
are ``4 p (1 - p)`` and ``log(1 + 1/offset)**2 p (1 - p)``, so the rule gives
``sigma_max = sqrt(sigma_min**2 + 4 v_T / log(1 + 1/offset)**2)`` whatever the ink fraction ``p``:
2.31 for the published ``sigma = 0.8``, ``T = 1``, offset 1.
"""

from __future__ import annotations

import numpy as np

from dale_langevin.processes.additive import VESDE
from dale_langevin.processes.base import DiffusionProcess
from dale_langevin.processes.gbm import GBM


def gaussian_domain(process: DiffusionProcess, images) -> np.ndarray:
    """The data ``(N, ...)`` (images in [0, 1]) in the domain where ``process``'s kernel is Gaussian: ``log x`` for GBM."""
    x0 = np.asarray(process.encode(np.asarray(images, np.float32)), np.float64)
    return np.log(x0) if isinstance(process, GBM) else x0


def signal_and_noise(process: DiffusionProcess, t: float) -> tuple[float, float]:
    """``(a_t, std_t)`` of the kernel ``y_t = a_t y0 + std_t eps`` in the Gaussian domain (GBM: ``a_t = 1``)."""
    if isinstance(process, GBM):
        return 1.0, float(process.noise_std(t))
    return float(process.mean_coeff(t)), float(process.noise_std(t))


def terminal_snr(process: DiffusionProcess, images) -> float:
    """``a_T**2 Var[y0] / std_T**2`` for training images ``(N, ...)`` in [0, 1], variance pooled over everything."""
    a, s = signal_and_noise(process, process.T)
    return a**2 * float(np.var(gaussian_domain(process, images))) / s**2


def matched_ve_sigma_max(images, reference: DiffusionProcess, sigma_min: float = 0.01, T: float = 1.0) -> float:
    """The ``sigma_max`` of a :class:`~.additive.VESDE` (``sigma_min``, ``T``) whose terminal SNR on ``images``
    ``(N, ...)`` in [0, 1] equals ``reference``'s (see the module docstring); a float."""
    snr = terminal_snr(reference, images)
    if not np.isfinite(snr) or snr <= 0:
        raise ValueError(f"matched_ve_sigma_max: the reference's terminal SNR must be finite and > 0, got {snr}")
    var = float(np.var(gaussian_domain(VESDE(sigma_min=sigma_min, sigma_max=2 * sigma_min, T=T), images)))
    return float(np.sqrt(sigma_min**2 + var / snr))
