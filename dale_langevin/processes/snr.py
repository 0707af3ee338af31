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

from dale_langevin.checks import check_positive
from dale_langevin.processes.additive import VESDE
from dale_langevin.processes.base import DiffusionProcess


def gaussian_domain(process: DiffusionProcess, images) -> np.ndarray:
    """Images ``(N, ...)`` in [0, 1], encoded by ``process`` and taken to its Gaussian coordinates (``log x`` for
    GBM, ``x`` for the additive processes); float64, same shape."""
    x0 = np.asarray(process.encode(np.asarray(images, np.float32)), np.float64)
    return np.asarray(process.gaussian_coords(x0), np.float64)


def terminal_snr(process: DiffusionProcess, images) -> float:
    """``a_T**2 Var[y0] / std_T**2`` for training images ``(N, ...)`` in [0, 1], variance pooled over everything."""
    a, s = (float(c) for c in process.kernel_coeffs(process.T))
    return a**2 * float(np.var(gaussian_domain(process, images))) / s**2


def matched_ve_sigma_max(images, process: DiffusionProcess, sigma_min: float = 0.01) -> float:
    """The ``sigma_max`` of a :class:`~.additive.VESDE` with ``sigma_min`` whose terminal SNR on ``images``
    ``(N, ...)`` in [0, 1] equals ``process``'s (see the module docstring); a float."""
    check_positive(sigma_min, "sigma_min")
    snr = terminal_snr(process, images)
    if not np.isfinite(snr) or snr <= 0:
        raise ValueError(f"matched_ve_sigma_max: the process's terminal SNR must be finite and > 0, got {snr}")
    var = float(np.var(gaussian_domain(VESDE(), images)))  # VE's encoding, 2 u - 1, has no parameter
    return float(np.sqrt(sigma_min**2 + var / snr))
