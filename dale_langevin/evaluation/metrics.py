"""Sample-quality metrics on feature vectors: FID and KID (host-side numpy/scipy, float64).

Features are ``(N, D)`` arrays, e.g. Inception-V3 pool features or the penultimate layer of the
offline classifier (:mod:`dale_langevin.evaluation.classifier`). Everything here is pure numpy in float64:
the inputs are cast, nothing is jitted, and no state is kept.

* FID (Heusel et al., 2017): the Frechet (2-Wasserstein) distance between Gaussians fitted to
  the two feature sets, ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})``.
* KID (Binkowski et al., 2018): the unbiased MMD^2 with the cubic polynomial kernel
  ``k(x, y) = (x.y / D + 1)^3``, averaged over random subsets.
"""

from __future__ import annotations

import numpy as np


def _as_features(features, name: str, min_rows: int = 2) -> np.ndarray:
    """``features`` as a finite float64 ``(N, D)`` array with ``N >= min_rows``, else ValueError."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array of feature vectors, got shape {x.shape}")
    n, d = x.shape
    if d < 1:
        raise ValueError(f"{name} must have at least one feature dimension, got shape {x.shape}")
    if n < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} feature vectors (N >= {min_rows}), got N = {n}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x


def _check_same_dim(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimension mismatch: {name_a} has D = {a.shape[1]}, {name_b} has D = {b.shape[1]}")


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (divisor ``N - 1``) of ``features`` ``(N, D)``.

    Both are float64. Raises ValueError unless ``features`` is a finite 2-D array with ``N >= 2``.
    Unlike ``np.cov``, ``D = 1`` still gives a ``(1, 1)`` covariance.
    """
    x = _as_features(features, "features")
    mu = x.mean(axis=0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return mu, 0.5 * (sigma + sigma.T)  # exact symmetry for the eigendecompositions downstream


def _sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix ``(D, D)`` via eigh (negative roundoff clipped)."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _check_moments(mu, sigma, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1:
        raise ValueError(f"mu{name} must be a 1-D (D,) mean vector, got shape {mu.shape}")
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise ValueError(
            f"sigma{name} must be a (D, D) = ({d}, {d}) covariance to match mu{name}, got shape {sigma.shape}"
        )
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"mu{name} / sigma{name} contain non-finite values (NaN or inf)")
    scale = max(float(np.max(np.abs(sigma), initial=0.0)), np.finfo(np.float64).tiny)
    if np.max(np.abs(sigma - sigma.T), initial=0.0) > 1e-8 * scale:
        raise ValueError(f"sigma{name} must be symmetric (a covariance matrix)")
    return mu, 0.5 * (sigma + sigma.T)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`` between two Gaussians.

    Args:
      mu1, mu2: means, shape ``(D,)``.
      sigma1, sigma2: symmetric PSD covariances, shape ``(D, D)`` (may be singular, e.g. ``N <= D``).

    Returns:
      The squared 2-Wasserstein distance between ``N(mu1, S1)`` and ``N(mu2, S2)`` as a Python float,
      clipped at 0 (it is >= 0 exactly; a negative value could only be roundoff).

    The trace term is computed without a non-symmetric matrix square root. ``S1 S2`` and
    ``M = S1^{1/2} S2 S1^{1/2}`` have the same eigenvalues (``AB`` and ``BA`` share their spectrum,
    with ``A = S1^{1/2}``, ``B = S1^{1/2} S2``), and these are real and >= 0 because ``M`` is
    symmetric PSD; so ``Tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(M))``. Both steps use symmetric
    eigendecompositions (``eigh``/``eigvalsh``), which are backward stable and return real eigenvalues;
    tiny negative ones from roundoff are clipped to 0. A general ``sqrtm(S1 @ S2)`` (Schur-based) on
    the non-symmetric product can instead return spurious imaginary parts or fail to converge when the
    covariances are singular or ill-conditioned, which is the usual case for 2048-d features with
    few samples.

    Raises:
      ValueError: on shape mismatches, non-finite entries or a non-symmetric covariance.
    """
    mu1, sigma1 = _check_moments(mu1, sigma1, "1")
    mu2, sigma2 = _check_moments(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"dimension mismatch: mu1 has D = {mu1.shape[0]}, mu2 has D = {mu2.shape[0]}")
    root1 = _sqrt_psd(sigma1)
    m = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh(0.5 * (m + m.T))
    tr_covmean = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
    diff = mu1 - mu2
    value = float(diff @ diff) + float(np.trace(sigma1)) + float(np.trace(sigma2)) - 2.0 * tr_covmean
    return max(value, 0.0)


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet Inception Distance between feature sets ``(N, D)`` and ``(M, D)`` (``N, M >= 2``).

    The :func:`frechet_distance` of the Gaussians with the :func:`feature_stats` of each set. Note the
    estimator is biased upwards at finite ``N, M`` (compare FIDs only at equal sample sizes).
    Raises ValueError on ``N < 2``, ``M < 2``, non-finite values or a dimension mismatch.
    """
    a = _as_features(features_a, "features_a")
    b = _as_features(features_b, "features_b")
    _check_same_dim(a, b, "features_a", "features_b")
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID kernel matrix ``(x_i . y_j / D + 1)^3``, shape ``(len(x), len(y))``."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    m, n = x.shape[0], y.shape[0]
    k_xx, k_yy, k_xy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    # The unbiased U-statistic drops the i == j terms of the within-set sums.
    term_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    term_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(term_xx + term_yy - 2.0 * k_xy.mean())


def mmd2_unbiased(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Unbiased MMD^2 between feature sets ``(N, D)`` and ``(M, D)`` with ``k(x, y) = (x.y / D + 1)^3``.

    The U-statistic ``sum_{i != j} k(a_i, a_j) / (N (N-1)) + sum_{i != j} k(b_i, b_j) / (M (M-1))
    - 2 mean_{i, j} k(a_i, b_j)``, whose expectation is the population MMD^2 (0 when both sets come
    from one law), so single values can be negative. Uses all points (no subsets); memory is
    ``O((N + M)^2)``. Raises ValueError on ``N < 2``, ``M < 2``, non-finite values or a dimension mismatch.
    """
    a = _as_features(features_a, "features_a")
    b = _as_features(features_b, "features_b")
    _check_same_dim(a, b, "features_a", "features_b")
    return _mmd2_unbiased(a, b)


def kid(
    features_a: np.ndarray, features_b: np.ndarray, *, n_subsets: int = 64, subset_size: int = 64, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance between feature sets ``(N, D)`` and ``(M, D)``: ``(mean, std)``.

    For each of ``n_subsets`` subsets, ``subset_size`` rows are drawn without replacement from each set
    (independently per subset and per set, with ``np.random.default_rng(seed)``, so the result is
    deterministic for a seed) and :func:`mmd2_unbiased` is computed; returns the mean and the standard
    deviation (``ddof=0``, as in the published protocol of 64 subsets of 64) over subsets, as floats.

    If ``subset_size`` exceeds ``min(N, M)`` it is reduced to ``min(N, M)`` (no error): with few samples
    every subset is then a permutation of the smaller set. The std measures the spread across subsets;
    ``std / sqrt(n_subsets)`` is a standard error of the mean only when subsets barely overlap
    (``n_subsets * subset_size`` well below ``N`` and ``M``).

    Raises:
      ValueError: if ``n_subsets < 1``, ``subset_size < 2``, ``N < 2``, ``M < 2``, on non-finite values
        or a dimension mismatch.
    """
    a = _as_features(features_a, "features_a")
    b = _as_features(features_b, "features_b")
    _check_same_dim(a, b, "features_a", "features_b")
    if int(n_subsets) != n_subsets or n_subsets < 1:
        raise ValueError(f"n_subsets must be an integer >= 1, got {n_subsets!r}")
    if int(subset_size) != subset_size or subset_size < 2:
        raise ValueError(f"subset_size must be an integer >= 2 (the unbiased MMD needs pairs), got {subset_size!r}")
    size = min(int(subset_size), a.shape[0], b.shape[0])
    rng = np.random.default_rng(seed)
    values = np.empty(int(n_subsets))
    for s in range(int(n_subsets)):
        ia = rng.choice(a.shape[0], size, replace=False)
        ib = rng.choice(b.shape[0], size, replace=False)
        values[s] = _mmd2_unbiased(a[ia], b[ib])
    return float(values.mean()), float(values.std())
