"""The sampler registry: one signature for every sampler, settings from the function, counts that match the calls."""

import functools

import jax
import jax.numpy as jnp
import pytest

from dale_langevin import GBM, VPSDE, LogNormalMixture, samplers
from dale_langevin.samplers import registry

MIXTURE = LogNormalMixture.create([0.3, 0.7], [-0.5, 0.5], [0.1, 0.1])
SMALL = {"n_steps": 3}  # every built-in sampler has n_steps: keep the counted runs short


def _counted_settings(spec) -> dict:
    """Short runs in which every term of the count is nonzero (inner steps, final denoising steps)."""
    return {**SMALL, **{k: 2 for k in ("n_inner", "denoise_steps") if k in spec.defaults}}


def _score_for(process):
    if process.name == "gbm":
        return MIXTURE.score_fn(process)
    return lambda x, t: -x / (1.0 + process.noise_std(t)[:, None] ** 2)  # any smooth additive score


@pytest.mark.parametrize("method", samplers.names())
def test_declared_network_evaluations_match_the_calls(method):
    """``nfe`` of every registered sampler equals the score evaluations its function makes."""
    spec = samplers.get(method)
    process = GBM() if "gbm" in spec.processes else VPSDE()
    calls = []
    score = _score_for(process)

    def counting(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return score(x, t)

    x_T = jnp.exp(0.1 * jax.random.normal(jax.random.key(0), (2, 3))) + (0.0 if process.name == "gbm" else -1.0)
    settings = spec.settings(_counted_settings(spec))
    out = samplers.sample(jax.random.key(1), counting, x_T, process, method=method, **_counted_settings(spec))
    jax.effects_barrier()
    assert out.shape == x_T.shape
    assert len(calls) == samplers.network_evaluations(method, settings) == spec.nfe(**settings)


def test_settings_come_from_the_keyword_only_parameters():
    spec = samplers.get("dale_langevin")
    assert dict(spec.defaults) == dict(
        n_steps=1000, t_end=0.0, step_size=None, n_inner=1, noise_decay=1.0, denoise_steps=0
    )
    assert dict(spec.types) == {"step_size": float}  # a None default keeps its type for the config placeholder
    assert dict(samplers.get("ode").defaults)["solver"] == "dpm2"
    assert set(samplers.names("gbm")) == {"dale_langevin", "sign_agnostic", "ode", "ddim", "dpm2m", "dpm3m", "renoise"}
    assert samplers.names("ve") == ("euler_maruyama",)
    assert samplers.get("ode").describe({"solver": "heun"}) == "ode (heun)"


def test_bad_calls_and_registrations_are_refused():
    with pytest.raises(ValueError, match="no setting"):
        samplers.get("dale_langevin").settings({"n_levels": 3})
    with pytest.raises(ValueError, match="unknown sampler 'rk45'"):
        samplers.get("rk45")
    with pytest.raises(ValueError, match="supports processes"):
        samplers.sample(jax.random.key(0), lambda x, t: x, jnp.ones((2, 2)), VPSDE(), method="ode")

    def no_default(rng, score_fn, x_T, process, *, n_steps):
        return x_T

    def untyped_none(rng, score_fn, x_T, process, *, scale=None):
        return x_T

    with pytest.raises(TypeError, match="needs a default"):
        registry.register("t_no_default", no_default, processes=("gbm",), nfe=lambda **_: 0)
    with pytest.raises(TypeError, match="annotate it"):
        registry.register("t_untyped", untyped_none, processes=("gbm",), nfe=lambda **_: 0)
    with pytest.raises(ValueError, match="identifier"):
        registry.register("not a name", untyped_none, processes=("gbm",), nfe=lambda **_: 0)
    with pytest.raises(ValueError, match="at least one process"):
        registry.register("t_none", no_default, processes=(), nfe=lambda **_: 0)
    assert "t_no_default" not in samplers.names() and "t_untyped" not in samplers.names()


def test_the_decorator_form_registers_and_jits():
    @samplers.register("t_scaled", processes=("gbm",), nfe=lambda n_steps, scale: n_steps)
    def scaled(rng, score_fn, x_T, process, *, n_steps: int = 2, scale: float = 0.5):
        t = jnp.full((x_T.shape[0],), process.T / 2)
        for _ in range(n_steps):
            x_T = x_T * jnp.exp(scale * 0.01 * score_fn(x_T, t))
        return x_T

    try:
        process = GBM()
        run = jax.jit(
            functools.partial(
                samplers.sample, score_fn=MIXTURE.score_fn(process), process=process, method="t_scaled", scale=2.0
            )
        )
        out = run(jax.random.key(0), x_T=jnp.ones((2, 2)))
        assert out.shape == (2, 2) and bool(jnp.all(out > 0))
        assert samplers.network_evaluations("t_scaled", {"n_steps": 4}) == 4
    finally:
        samplers.unregister("t_scaled")
    assert "t_scaled" not in samplers.names()
