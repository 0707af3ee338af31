"""Sample-quality metrics: FID against closed forms and scipy, KID/MMD unbiasedness, input errors."""

import numpy as np
import pytest
import scipy.linalg

from dale_langevin.evaluation import metrics


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    """A well-conditioned random SPD matrix (d, d)."""
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.5 * np.eye(d)


def _correlated(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """(n, d) samples with a non-trivial mean and covariance."""
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)


# ----------------------------------------------------------------------------- feature_stats


def test_feature_stats_is_mean_and_unbiased_covariance():
    x = _correlated(np.random.default_rng(0), 50, 6).astype(np.float32)
    mu, sigma = metrics.feature_stats(x)
    assert mu.dtype == sigma.dtype == np.float64
    assert mu.shape == (6,) and sigma.shape == (6, 6)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False, ddof=1), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(sigma, sigma.T)
    # D = 1 still gives a (1, 1) covariance (np.cov would give a 0-d array).
    mu1, sigma1 = metrics.feature_stats(np.array([[1.0], [2.0], [4.0]]))
    assert mu1.shape == (1,) and sigma1.shape == (1, 1)
    np.testing.assert_allclose(sigma1, [[np.var([1.0, 2.0, 4.0], ddof=1)]])


# ----------------------------------------------------------------------------- FID


@pytest.mark.parametrize("n, d", [(500, 32), (20, 64)])  # full rank, and N < D (singular covariance)
def test_fid_of_a_set_with_itself_is_zero(n, d):
    x = _correlated(np.random.default_rng(1), n, d)
    trace_scale = np.trace(metrics.feature_stats(x)[1])
    assert abs(metrics.fid(x, x)) <= 1e-6 * trace_scale


def test_frechet_distance_closed_form_for_commuting_covariances():
    rng = np.random.default_rng(2)
    d = 7
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    s1[0] = 0.0  # singular covariances are allowed (and where a general sqrtm struggles)
    s2[1] = 0.0
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    got = metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert isinstance(got, float)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # Commuting but not diagonal: the same closed form in a rotated basis.
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    got_rot = metrics.frechet_distance(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T)
    # Rotated, the zero eigenvalues come back as roundoff (~eps * |S|), and the trace term takes their
    # square roots: the error is of order sqrt(eps * |S|) per null direction (2.5e-9 relative seen on
    # one machine against 1e-12 on another), not eps. Two null directions, a factor 2 in the formula.
    atol = 2 * 2 * np.sqrt(np.finfo(np.float64).eps * max(s1.max(), s2.max()))
    np.testing.assert_allclose(got_rot, expected, rtol=1e-12, atol=atol)


@pytest.mark.parametrize("d", [2, 10, 40])
def test_frechet_distance_matches_sqrtm_reference_for_non_commuting_covariances(d):
    rng = np.random.default_rng(3 + d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    assert not np.allclose(s1 @ s2, s2 @ s1)
    covmean = scipy.linalg.sqrtm(s1 @ s2)  # well-conditioned SPD inputs: the reference is accurate here
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean).real
    np.testing.assert_allclose(metrics.frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-9)


def test_fid_of_large_gaussian_samples_matches_closed_form():
    d, n = 4, 100_000
    mu1, mu2 = np.array([0.0, 1.0, -1.0, 0.5]), np.array([0.5, 0.0, -1.0, 1.5])
    s1, s2 = np.array([1.0, 2.0, 0.5, 0.3]), np.array([0.5, 2.0, 1.5, 0.1])
    exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    rng = np.random.default_rng(4)
    a = mu1 + np.sqrt(s1) * rng.normal(size=(n, d))
    b = mu2 + np.sqrt(s2) * rng.normal(size=(n, d))
    # Tolerance from the sample size: by the delta method (Gaussian data, diagonal S; the gradient in the
    # off-diagonal covariance entries vanishes there) the estimate's std is sqrt(sum_i [4 dmu_i^2 (s1_i + s2_i)
    # + 2 s1_i^2 (1 - sqrt(s2_i/s1_i))^2 + 2 s2_i^2 (1 - sqrt(s1_i/s2_i))^2] / n), about 0.014 here (matches
    # the spread over seeds); its bias is O(tr(S1 + S2) / n) ~ 1e-4. Allow 5 std + that bias.
    var = (
        np.sum(
            4 * (mu1 - mu2) ** 2 * (s1 + s2)
            + 2 * s1**2 * (1 - np.sqrt(s2 / s1)) ** 2
            + 2 * s2**2 * (1 - np.sqrt(s1 / s2)) ** 2
        )
        / n
    )
    tol = 5 * np.sqrt(var) + np.sum(s1 + s2) / n
    assert abs(metrics.fid(a, b) - exact) < tol
    assert tol < 0.03 * exact  # the check is meaningful: a few percent of the value


def test_fid_symmetric_nonnegative_and_translation_identities():
    rng = np.random.default_rng(5)
    a, b = _correlated(rng, 300, 8), 0.7 * _correlated(rng, 400, 8)
    f_ab = metrics.fid(a, b)
    assert f_ab > 0
    np.testing.assert_allclose(metrics.fid(b, a), f_ab, rtol=1e-10)
    # A common translation changes neither means' difference nor covariances.
    shift = 10.0 * rng.normal(size=8)
    np.testing.assert_allclose(metrics.fid(a + shift, b + shift), f_ab, rtol=1e-9)
    # A common rotation (orthogonal map) leaves the Frechet distance unchanged too.
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    np.testing.assert_allclose(metrics.fid(a @ q.T, b @ q.T), f_ab, rtol=1e-9)
    # Translating one set by delta: only the mean term changes, by ||dmu + delta||^2 - ||dmu||^2.
    delta = rng.normal(size=8)
    dmu = a.mean(axis=0) - b.mean(axis=0)
    np.testing.assert_allclose(metrics.fid(a + delta, b) - f_ab, delta @ delta + 2 * delta @ dmu, rtol=1e-9)
    # Against the set itself (equal means) that is ||delta||^2 exactly.
    np.testing.assert_allclose(metrics.fid(a + delta, a), delta @ delta, rtol=1e-9)


# ----------------------------------------------------------------------------- MMD / KID


def _biased_mmd2(x, y):
    """The V-statistic (all pairs including i == j); E >= population MMD^2 + O(1/n)."""
    k = lambda u, v: (u @ v.T / u.shape[1] + 1.0) ** 3
    return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()


def test_mmd2_unbiased_matches_its_definition():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(7, 3)) + 0.3
    k = lambda u, v: (np.dot(u, v) / 3 + 1.0) ** 3
    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    yy = sum(k(y[i], y[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(7)) / (5 * 7)
    np.testing.assert_allclose(metrics.mmd2_unbiased(x, y), xx + yy - 2 * xy, rtol=1e-12)


def test_mmd2_unbiased_is_unbiased_where_the_v_statistic_is_not():
    rng = np.random.default_rng(7)
    repeats, n, d = 400, 16, 5
    unbiased, biased = np.empty(repeats), np.empty(repeats)
    for r in range(repeats):
        x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d))  # one law: the population MMD^2 is 0
        unbiased[r], biased[r] = metrics.mmd2_unbiased(x, y), _biased_mmd2(x, y)
    # Repeats are independent, so std / sqrt(repeats) is the standard error of their average.
    se_u = unbiased.std(ddof=1) / np.sqrt(repeats)
    se_b = biased.std(ddof=1) / np.sqrt(repeats)
    assert abs(unbiased.mean()) < 4 * se_u
    assert biased.mean() > 10 * se_b  # bias (E k(x,x) - E k(x,x')) (2/n) > 0 clearly visible
    assert np.any(unbiased < 0)  # single unbiased estimates straddle 0


def test_kid_near_zero_for_one_law_and_positive_for_shifted_law():
    rng = np.random.default_rng(8)
    n, d, n_subsets = 20_000, 16, 64
    a, b = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    mean, std = metrics.kid(a, b, n_subsets=n_subsets, subset_size=64, seed=0)
    # Subsets of 64 from 20k points share ~0.2 points pairwise, so the 64 subset values are nearly
    # independent and std / sqrt(n_subsets) is their mean's standard error (checked calibrated over seeds).
    se = std / np.sqrt(n_subsets)
    assert std > 0
    assert abs(mean) < 4 * se
    shifted_mean, shifted_std = metrics.kid(a, b + 0.25, n_subsets=n_subsets, subset_size=64, seed=0)
    assert shifted_mean > 10 * shifted_std / np.sqrt(n_subsets)
    assert shifted_mean > 10 * abs(mean)


def test_kid_deterministic_for_a_seed_and_consistent_with_mmd2():
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(200, 6)), rng.normal(size=(150, 6)) + 0.2
    first = metrics.kid(a, b, n_subsets=10, subset_size=32, seed=3)
    assert all(isinstance(v, float) for v in first)
    assert metrics.kid(a, b, n_subsets=10, subset_size=32, seed=3) == first
    assert metrics.kid(a, b, n_subsets=10, subset_size=32, seed=4) != first
    # subset_size above min(N, M) is reduced to it; subsets of the whole sets are permutations of
    # them, so every subset value is the full-set unbiased MMD^2 and the std is 0 up to roundoff.
    small_a, small_b = a[:30], b[:40]
    full = metrics.mmd2_unbiased(small_a, small_a[::-1])
    mean, std = metrics.kid(small_a, small_a[::-1], n_subsets=5, subset_size=1000)
    np.testing.assert_allclose(mean, full, rtol=1e-9, atol=1e-12)
    assert std < 1e-9 * max(1.0, abs(full))
    assert metrics.kid(small_a, small_b, n_subsets=5, subset_size=1000) == metrics.kid(
        small_a, small_b, n_subsets=5, subset_size=30
    )


# ----------------------------------------------------------------------------- errors


def test_too_few_samples_raise():
    one, ok = np.zeros((1, 3)), np.ones((5, 3))
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.feature_stats(one)
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.fid(one, ok)
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.fid(ok, one)
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.mmd2_unbiased(ok, one)
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.kid(one, ok)


def test_dimension_and_shape_mismatches_raise():
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(10, 3)), rng.normal(size=(10, 4))
    for fn in (metrics.fid, metrics.mmd2_unbiased, metrics.kid):
        with pytest.raises(ValueError, match="dimension mismatch"):
            fn(a, b)
    with pytest.raises(ValueError, match=r"2-D \(N, D\)"):
        metrics.fid(a[:, 0], a)
    mu3, s3, mu4, s4 = np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)
    with pytest.raises(ValueError, match="dimension mismatch"):
        metrics.frechet_distance(mu3, s3, mu4, s4)
    with pytest.raises(ValueError, match="sigma1 must be a"):
        metrics.frechet_distance(mu3, s4, mu3, s3)
    with pytest.raises(ValueError, match="mu2 must be a 1-D"):
        metrics.frechet_distance(mu3, s3, s3, s3)
    with pytest.raises(ValueError, match="symmetric"):
        metrics.frechet_distance(mu3, np.triu(np.ones((3, 3))), mu3, s3)


def test_bad_values_and_kid_arguments_raise():
    rng = np.random.default_rng(11)
    a, b = rng.normal(size=(10, 3)), rng.normal(size=(10, 3))
    bad = a.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        metrics.fid(bad, b)
    with pytest.raises(ValueError, match="n_subsets"):
        metrics.kid(a, b, n_subsets=0)
    with pytest.raises(ValueError, match="subset_size"):
        metrics.kid(a, b, subset_size=1)
