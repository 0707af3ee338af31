"""The closed-form test bed and the process protocol."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dale_langevin import GBM, VESDE, VPSDE, LogNormalMixture, LogVESDE, get_process, recovery_stats


@pytest.mark.parametrize("sde", [GBM(), GBM(sigma=0.3, mu=0.2, schedule="linear", sigma_end=1.1)])
def test_mixture_score_is_x_times_grad_log_density(sde):
    mixture = LogNormalMixture.create([0.2, 0.5, 0.3], [-0.4, 0.1, 0.6], [0.1, 0.2, 0.05])
    x = jnp.exp(jax.random.normal(jax.random.key(0), (6, 3, 2)))
    t = jnp.linspace(0.01, sde.T, 6)
    grad = jax.grad(lambda x: jnp.sum(mixture.log_prob(x, sde, t)))(x)
    h = mixture.hyvarinen(x, sde, t)
    chex.assert_shape(h, x.shape)
    np.testing.assert_allclose(h, x * grad, rtol=1e-4, atol=1e-4)
    # A scalar time gives the same as a constant batch of times.
    np.testing.assert_allclose(
        mixture.hyvarinen(x, sde, 0.5), mixture.hyvarinen(x, sde, jnp.full((6,), 0.5)), rtol=1e-6
    )


def test_marginal_sample_matches_simulated_forward_process():
    sde = GBM()
    mixture = LogNormalMixture.create([0.3, 0.7], [-0.5, 0.5], [0.1, 0.1])
    n = 100_000
    exact = np.log(np.asarray(mixture.sample_marginal(jax.random.key(1), sde, 0.4, (n,))))
    x0 = mixture.sample(jax.random.key(2), (n,))
    pushed = np.log(np.asarray(sde.perturb(jax.random.key(3), x0, jnp.full((n,), 0.4))))
    se = exact.std() / np.sqrt(n)
    assert abs(exact.mean() - pushed.mean()) < 6 * se
    assert abs(exact.std() - pushed.std()) < 6 * se


def test_recovery_stats_on_exact_samples():
    mixture = LogNormalMixture.create([0.3, 0.7], [-0.5, 0.5], [0.1, 0.1])
    stats = recovery_stats(mixture.sample(jax.random.key(4), (50_000,)), mixture)
    np.testing.assert_allclose(stats["weights"], [0.3, 0.7], atol=0.01)
    np.testing.assert_allclose(stats["log_means"], [-0.5, 0.5], atol=0.005)
    np.testing.assert_allclose(stats["log_stds"], [0.1, 0.1], atol=0.005)
    assert recovery_stats(jnp.array([1.0, -1.0, jnp.nan, 2.0]), mixture)["bad_fraction"] == 0.5


def test_mixture_validation():
    with pytest.raises(ValueError, match="sum to 1"):
        LogNormalMixture.create([0.5, 0.6], [0.0, 1.0], [0.1, 0.1])
    with pytest.raises(ValueError, match="shape"):
        LogNormalMixture.create([1.0], [0.0, 1.0], [0.1, 0.1])


@pytest.mark.parametrize(
    "name, cls, kwargs",
    [("gbm", GBM, dict(sigma=0.5)), ("ve", VESDE, {}), ("vp", VPSDE, dict(beta_max=10.0)), ("log_ve", LogVESDE, {})],
)
def test_get_process(name, cls, kwargs):
    process = get_process(name, **kwargs)
    assert isinstance(process, cls)
    x0 = process.encode(jax.random.uniform(jax.random.key(5), (4, 3)))
    t = jnp.array([0.1, 0.4, 0.7, 1.0])
    x_t = process.perturb(jax.random.key(6), x0, t)
    chex.assert_tree_all_finite((x_t, process.cond_score(x_t, x0, t), process.loss_weight(t)))
    prior = process.fit_prior(x0)
    chex.assert_shape(prior.sample(jax.random.key(7), (2, 3)), (2, 3))


def test_get_process_errors():
    with pytest.raises(ValueError, match="process name"):
        get_process("cld")
    with pytest.raises(ValueError, match="VESDE.sigma_max"):
        get_process("ve", sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="VPSDE.beta_min"):
        get_process("vp", beta_min=-1.0)
