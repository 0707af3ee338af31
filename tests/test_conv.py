"""cpu/conv.py's convolution, the GroupNorm and upsampling of the U-Net: equal to the stock ops, gradients too."""

import collections

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from dale_langevin.cpu import conv
from dale_langevin.nets.unet import ScoreUNet

DN = ("NHWC", "HWIO", "NHWC")


def _close(actual, expected, rtol=1e-5):
    """Relative to the largest entry: summation order differs between the two gradients."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize(
    "kernel, stride, c_in, c_out, size",
    [
        (3, 1, 1, 8, 8),
        (3, 1, 16, 8, 7),
        (3, 2, 4, 6, 7),
        (1, 1, 16, 8, 6),
        (1, 2, 4, 6, 7),
    ],
)
def test_values_and_gradients_match_stock(kernel, stride, c_in, c_out, size):
    kx, kw, kg = jax.random.split(jax.random.key(kernel * 100 + stride * 10 + c_in), 3)
    x = jax.random.normal(kx, (3, size, size + 1, c_in))
    w = jax.random.normal(kw, (kernel, kernel, c_in, c_out)) / np.sqrt(kernel * kernel * c_in)
    args = dict(window_strides=(stride, stride), padding="SAME", dimension_numbers=DN)

    @jax.jit
    def both(x, w):
        y_ref, vjp_ref = jax.vjp(lambda x, w: lax.conv_general_dilated(x, w, **args), x, w)
        y, vjp = jax.vjp(lambda x, w: conv.conv_materialized(x, w, **args), x, w)
        g = jax.random.normal(kg, y_ref.shape)
        return (y, *vjp(g)), (y_ref, *vjp_ref(g))

    got, want = both(x, w)
    for a, b in zip(got, want):  # output, input gradient, kernel gradient
        _close(a, b)


def test_unsupported_arguments_fall_back_to_the_stock_op():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
    w_grouped = jax.random.normal(jax.random.key(1), (3, 3, 2, 4))
    w = jax.random.normal(jax.random.key(2), (3, 3, 4, 3))
    grouped = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=DN, feature_group_count=2)
    dilated = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=DN, rhs_dilation=(2, 2))
    outputs = jax.jit(lambda f: (f(x, w_grouped, **grouped), f(x, w, **dilated)), static_argnums=0)
    chex.assert_trees_all_equal(outputs(conv.conv_materialized), outputs(lax.conv_general_dilated))


def test_policy():
    assert conv.for_backend("cpu") is conv.conv_materialized
    # Off the CPU the stock op: accelerators keep XLA's own backward pass.
    assert conv.for_backend("gpu") is None and conv.for_backend("tpu") is None


def test_the_builder_picks_the_convolution_for_the_backend():
    from dale_langevin.pipeline import config as config_lib

    c = config_lib.default_config()
    assert jax.default_backend() == "cpu"  # the tests run on CPU (conftest)
    assert config_lib.make_model(c).conv is conv.conv_materialized
    assert config_lib.make_model(c, backend="gpu").conv is None


@pytest.mark.parametrize("fn", [conv.materialize, conv.materialize_cotangent])
def test_materialize_is_the_identity_and_differentiable(fn):
    x = jnp.array([[np.nan, 1.0, -2.0], [np.inf, 0.0, 3.5]])  # NaN first: the predicate's false branch
    f = jax.jit(lambda v: fn(2.0 * v) + 1.0)
    for v in (x, x[::-1]):  # and a finite first entry: the true branch
        chex.assert_trees_all_equal(f(v), 2.0 * v + 1.0)
    c = jax.random.normal(jax.random.key(0), (2, 3))
    for v in (jnp.ones((2, 3)), x):
        chex.assert_trees_all_equal(jax.grad(lambda v: jnp.vdot(fn(v), c))(v), c)
        chex.assert_trees_all_equal(jax.jvp(fn, (v,), (c,))[1], c)


def test_the_boundaries_survive_xla():
    x = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
    hlo = lambda f: jax.jit(f).lower(x).compile().as_text()
    # materialize: a conditional after XLA's optimisation (an optimization_barrier would be gone on CPU).
    assert "conditional(" in hlo(lambda v: conv.materialize(2.0 * v) + 1.0)
    # materialize_cotangent: no conditional in the forward value, one in the gradient.
    assert "conditional(" not in hlo(lambda v: jnp.sum(conv.materialize_cotangent(jnp.sin(v)) ** 2))
    assert "conditional(" in hlo(jax.grad(lambda v: jnp.sum(conv.materialize_cotangent(jnp.sin(v)) ** 2)))


def _primitive_counts(model, x, level) -> collections.Counter:
    params = jax.eval_shape(model.init, jax.random.key(1), x, level)
    return collections.Counter(e.primitive.name for e in jax.make_jaxpr(model.apply)(params, x, level).jaxpr.eqns)


def test_the_unet_computes_every_convolution_with_the_given_function(unet_inputs):
    x, level = unet_inputs
    stock, fast = _primitive_counts(_unet(None), x, level), _primitive_counts(_unet(conv.conv_materialized), x, level)
    total = stock["conv_general_dilated"]
    assert total > 10 and stock["custom_jvp_call"] == 0
    # Every convolution behind a materialised cotangent, the 1x1 ones as matmuls.
    assert fast["custom_vjp_call"] == 0 and fast["custom_jvp_call"] == total
    assert 0 < fast["conv_general_dilated"] < total
    assert fast["conv_general_dilated"] + fast["dot_general"] - stock["dot_general"] == total


@pytest.fixture(scope="module")
def unet_inputs():
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1), minval=-1.0, maxval=1.0)
    level = jnp.array([-2.0, 0.5])
    return x, level


def _unet(conv_fn, dtype=jnp.float32):
    # Two levels: 3x3 convolutions, a stride-2 one and 1x1 skips (8 -> 16 -> 8 channels).
    return ScoreUNet(channels=8, channel_mult=(1, 2), num_res_blocks=1, conv=conv_fn, dtype=dtype)


def _random_params(model, x, level):
    """Random values (no zero-initialised kernels hiding gradient differences) in the model's parameter tree."""
    shapes = jax.eval_shape(model.init, jax.random.key(1), x, level)
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), shapes)


def test_unet_params_outputs_and_gradients_do_not_depend_on_the_convolution(unet_inputs):
    x, level = unet_inputs
    fast = conv.conv_materialized
    # Same names, shapes and dtypes: checkpoints load whichever convolution a model uses.
    chex.assert_trees_all_equal_shapes_and_dtypes(
        jax.eval_shape(_unet(fast).init, jax.random.key(1), x, level),
        jax.eval_shape(_unet(None).init, jax.random.key(1), x, level),
    )
    params = _random_params(_unet(None), x, level)

    def loss(conv_fn):
        fn = lambda p, x: jnp.sum(jnp.tanh(_unet(conv_fn).apply(p, x, level)))
        return jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))

    # 1x1 convolutions as matmuls, all behind materialised cotangents. XLA fuses the elementwise
    # backward differently, so sums run in other orders: tolerances relative to the largest
    # gradient anywhere (some leaves, e.g. a GroupNorm bias right before another GroupNorm, are zero
    # up to rounding, around 1e-7).
    ref_loss, ref_grads = loss(None)(params, x)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(ref_grads))
    got_loss, got_grads = loss(fast)(params, x)
    _close(got_loss, ref_loss)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale), got_grads, ref_grads)

    # Forward mode (ode.log_likelihood's divergence) works and agrees with the stock op.
    def jvp(conv_fn):
        return jax.jit(lambda p, x, t: jax.jvp(lambda x: _unet(conv_fn).apply(p, x, level), (x,), (t,)))

    t = jax.random.normal(jax.random.key(9), x.shape)
    jax.tree.map(_close, jvp(fast)(params, x, t), jvp(None)(params, x, t))


def test_bfloat16_model_keeps_float32_params_and_output(unet_inputs):
    x, level = unet_inputs
    params = _random_params(_unet(None), x, level)
    out32 = jax.jit(_unet(None).apply)(params, x, level)
    out16 = jax.jit(_unet(None, jnp.bfloat16).apply)(params, x, level)
    assert out16.dtype == jnp.float32
    # bf16 keeps 8 bits of mantissa: close to the float32 output, not identical.
    np.testing.assert_allclose(out16, out32, atol=0.05 * float(jnp.abs(out32).max()))
    assert not np.array_equal(out16, out32)


def test_upsample_matches_image_resize_and_its_gradient():
    from dale_langevin.nets.unet import upsample_nearest

    x = jax.random.normal(jax.random.key(3), (2, 3, 5, 4))
    expected = jax.image.resize(x, (2, 6, 10, 4), "nearest")
    chex.assert_trees_all_equal(upsample_nearest(x), expected)
    g = jax.random.normal(jax.random.key(4), expected.shape)
    grad = jax.grad(lambda x: jnp.vdot(upsample_nearest(x), g))(x)
    # Each input pixel receives the sum of its 2x2 block of output gradients.
    np.testing.assert_allclose(grad, g.reshape(2, 3, 2, 5, 2, 4).sum(axis=(2, 4)), rtol=1e-6)


@pytest.mark.parametrize(
    "shape, groups", [((2, 5, 6, 32), 32), ((2, 4, 4, 64), 32), ((3, 7, 7, 12), 4), ((2, 9, 8), 4)]
)
def test_group_norm_matches_flax_values_gradients_and_names(shape, groups):
    from flax import linen as nn

    from dale_langevin.nets.unet import GroupNorm

    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(5), shape)  # an offset mean: tests the variance formula
    ours, ref = GroupNorm(groups), nn.GroupNorm(groups, epsilon=1e-6)
    params = ref.init(jax.random.key(0), x)
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(7), p.shape), params)
    chex.assert_trees_all_equal_shapes_and_dtypes(ours.init(jax.random.key(0), x), params)
    g = jax.random.normal(jax.random.key(6), shape)
    loss = lambda m: lambda p, x: jnp.vdot(nn.silu(m.apply(p, x)), g)
    _close(ours.apply(params, x), ref.apply(params, x), rtol=2e-5)
    for a, b in zip(jax.grad(loss(ours), argnums=(0, 1))(params, x), jax.grad(loss(ref), argnums=(0, 1))(params, x)):
        jax.tree.map(lambda u, v: _close(u, v, rtol=5e-5), a, b)


def test_group_norm_bfloat16_output_and_bad_groups():
    from dale_langevin.nets.unet import GroupNorm

    x = 100.0 + jax.random.normal(jax.random.key(1), (2, 4, 4, 8))
    params = GroupNorm(4).init(jax.random.key(0), x)
    y16 = GroupNorm(4, dtype=jnp.bfloat16).apply(params, x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    _close(y16.astype(jnp.float32), GroupNorm(4).apply(params, x), rtol=0.1)  # bf16 input rounding at mean 100
    with pytest.raises(ValueError, match="6 channels do not split into 4 groups"):
        GroupNorm(4).init(jax.random.key(0), jnp.zeros((1, 2, 2, 6)))
