"""NCSNv2Deeper with conditional InstanceNorm++: parameter count of the published layout, pmap training
step, per-level conditioning, the norm's formula, input validation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dale_langevin.cpu.conv import conv_materialized
from dale_langevin.nets.ncsnv2 import (
    ConditionalInstanceNormPlus,
    NCSNv2Deeper,
    count_params,
    mean_pool2,
    resize_bilinear_align_corners,
)


def published_param_count(ngf: int, num_classes: int, channels: int) -> int:
    """NCSNv2Deeper's parameters counted layer by layer from the architecture, with conditional InstanceNorm++."""
    conv = lambda k, cin, cout, bias=True: k * k * cin * cout + (cout if bias else 0)
    norm = lambda c: num_classes * 3 * c  # (gamma, alpha, beta) per class and channel

    def residual(cin, cout, down, dilation):
        mid = cin if down else cout  # 'down' keeps the width in conv1
        n = norm(cin) + conv(3, cin, mid) + norm(mid) + conv(3, mid, cout)
        if down or cin != cout:  # ConvMeanPool 1x1, or a dilated 3x3 when dilated
            n += conv(3 if dilation > 1 else 1, cin, cout)
        return n

    rcu = lambda c, blocks: blocks * 2 * conv(3, c, c, bias=False)
    crp = lambda c: 2 * conv(3, c, c, bias=False)

    def refine(ins, features, start=False, end=False):
        n = sum(rcu(c, 2) for c in ins) + crp(features) + rcu(features, 3 if end else 1)
        return n if start else n + sum(conv(3, c, features) for c in ins)  # MSF convs have biases

    f = ngf
    total = conv(3, channels, f)  # begin_conv
    total += residual(f, f, False, 1) + residual(f, f, False, 1)  # res1
    total += residual(f, 2 * f, True, 1) + residual(2 * f, 2 * f, False, 1)  # res2
    total += residual(2 * f, 2 * f, True, 1) + residual(2 * f, 2 * f, False, 1)  # res3
    total += residual(2 * f, 4 * f, True, 2) + residual(4 * f, 4 * f, False, 2)  # res4
    total += residual(4 * f, 4 * f, True, 4) + residual(4 * f, 4 * f, False, 4)  # res5
    total += refine([4 * f], 4 * f, start=True)
    total += refine([4 * f, 4 * f], 2 * f)
    total += refine([2 * f, 2 * f], 2 * f)
    total += refine([2 * f, 2 * f], f)
    total += refine([f, f], f, end=True)
    total += norm(f) + conv(3, f, channels)  # normalizer, end_conv
    return total


def _init_shapes(model, shape):
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape), jnp.zeros(shape[:1], jnp.int32))


def _random_params(model, shape, seed):
    """Parameters of ``model``'s tree drawn in NumPy: compiling Flax's initialisers for ~150 leaves takes ~15 s here.

    Kernels ~ N(0, 1 / fan_in), biases ~ N(0, 0.1), norm tables ``1 + N(0, 0.1)`` for gamma and alpha, N(0, 0.1)
    for beta (so that the levels differ clearly).
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        if "kernel" in name:
            return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1])), jnp.float32)
        values = 0.1 * rng.normal(size=leaf.shape)
        if "embedding" in name:
            values[:, : 2 * leaf.shape[1] // 3] += 1.0
        return jnp.asarray(values, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, _init_shapes(model, shape))


@pytest.mark.parametrize("shape", [(1, 28, 28, 1), (1, 32, 32, 3)])
def test_parameter_count_matches_the_published_architecture(shape):
    params = _init_shapes(NCSNv2Deeper(ngf=128, num_classes=1000), shape)
    want = published_param_count(128, 1000, shape[-1])
    assert count_params(params) == want
    assert want == {1: 101_470_721, 3: 101_475_331}[shape[-1]]  # 18,048,000 of them in the 44 conditional norms


def test_pmap_forward_and_backward_on_two_devices(n_devices):
    assert n_devices >= 2, "conftest forces two CPU devices"
    model = NCSNv2Deeper(ngf=8, num_classes=10, conv=conv_materialized)
    per_dev, shape = 2, (12, 12, 2)  # 12 -> 6 -> 3: both resizes of the fusion are real upsamplings
    kx, kc, kt = jax.random.split(jax.random.key(1), 3)
    x = jax.random.uniform(kx, (n_devices, per_dev, *shape))
    cond = jax.random.randint(kc, (n_devices, per_dev), 0, 10)
    target = jax.random.normal(kt, x.shape)
    params = _random_params(model, (per_dev, *shape), seed=0)

    def step(p, x, c, t):
        def loss(p):
            out = model.apply(p, x, c, train=True)
            return jnp.mean(jnp.square(out - t)), out

        grads, out = jax.grad(loss, has_aux=True)(p)
        return out, jax.lax.pmean(grads, "d")

    out, grads = jax.pmap(step, axis_name="d", in_axes=(None, 0, 0, 0))(params, x, cond, target)
    chex.assert_shape(out, x.shape)
    chex.assert_type(out, jnp.float32)
    chex.assert_tree_all_finite((out, grads))
    zero = [jax.tree_util.keystr(k) for k, g in jax.tree_util.tree_leaves_with_path(grads) if not np.any(g[0] != 0)]
    assert not zero, f"parameters without gradient: {zero}"
    # The CPU conv hook (dilated convs included) computes what the stock op does.
    stock = jax.jit(NCSNv2Deeper(ngf=8, num_classes=10).apply)(params, x[1], cond[1])
    np.testing.assert_allclose(out[1], stock, rtol=1e-5, atol=1e-5)


def test_output_depends_on_the_level_and_not_on_the_rest_of_the_batch():
    model = NCSNv2Deeper(ngf=8, num_classes=10)
    xs = jax.random.uniform(jax.random.key(2), (8, 8, 8, 1))
    params = _random_params(model, (4, 8, 8, 1), seed=1)
    apply = jax.jit(model.apply)

    same_x = apply(params, jnp.repeat(xs[:1], 4, axis=0), jnp.array([0, 1, 2, 9]))
    for i in range(4):
        for j in range(i):
            assert np.max(np.abs(same_x[i] - same_x[j])) > 1e-3, f"levels {i} and {j} give the same output"

    a = apply(params, xs[:4], jnp.array([3, 5, 3, 7]))
    b = apply(params, jnp.concatenate([xs[:1], xs[4:7]]), jnp.array([3, 1, 9, 0]))
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)  # per-example statistics only


def test_conditional_instance_norm_plus_matches_its_formula():
    rng = np.random.default_rng(0)
    b, h, w, c, k = 3, 5, 6, 7, 4
    x = rng.normal(size=(b, h, w, c)) * rng.uniform(0.5, 3, size=c) + rng.normal(size=c) * 2
    cond = np.array([2, 0, 2])
    norm = ConditionalInstanceNormPlus(num_classes=k)
    init = norm.init(jax.random.key(0), jnp.zeros((1, h, w, c)), jnp.zeros(1, jnp.int32))
    table0 = np.asarray(init["params"]["embedding"])
    chex.assert_shape(table0, (k, 3 * c))
    assert np.all(table0[:, 2 * c :] == 0) and abs(table0[:, : 2 * c].mean() - 1) < 0.01
    assert 0.01 < table0[:, : 2 * c].std() < 0.03  # gamma, alpha ~ N(1, 0.02); beta 0

    table = rng.normal(size=(k, 3 * c))
    got = norm.apply({"params": {"embedding": jnp.asarray(table, jnp.float32)}}, jnp.asarray(x, jnp.float32), cond)

    gamma, alpha, beta = np.split(table[cond], 3, axis=-1)
    mu = x.mean(axis=(1, 2))
    s2 = x.var(axis=(1, 2))  # biased, as InstanceNorm2d
    m = (mu - mu.mean(-1, keepdims=True)) / np.sqrt(mu.var(-1, ddof=1, keepdims=True) + 1e-5)  # torch.var: unbiased
    hn = (x - mu[:, None, None]) / np.sqrt(s2[:, None, None] + 1e-5) + (alpha * m)[:, None, None]
    want = gamma[:, None, None] * hn + beta[:, None, None]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_resampling_helpers():
    x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3) ** 1.5
    subgrids = (x[:, ::2, ::2] + x[:, 1::2, ::2] + x[:, ::2, 1::2] + x[:, 1::2, 1::2]) / 4
    np.testing.assert_allclose(mean_pool2(jnp.asarray(x)), subgrids, rtol=1e-6)
    # align_corners=True: corners map to corners, output i samples input i * (n_in - 1) / (n_out - 1).
    line = jnp.asarray([0.0, 1.0, 4.0])[None, :, None, None] * jnp.ones((1, 1, 2, 1))
    up = resize_bilinear_align_corners(line, (5, 3))
    np.testing.assert_allclose(up[0, :, 1, 0], [0.0, 0.5, 1.0, 2.5, 4.0], rtol=1e-6)
    chex.assert_shape(up, (1, 5, 3, 1))
    np.testing.assert_allclose(up[0, :, 0, 0], up[0, :, 2, 0])


@pytest.mark.parametrize(
    "x_shape, cond, match",
    [
        ((2, 8, 8), np.zeros(2, np.int32), r"x of shape \(B, H, W, C\)"),
        ((2, 8, 8, 1), np.zeros((2, 1), np.int32), r"cond of shape \(B,\)"),
        ((2, 8, 8, 1), np.zeros(3, np.int32), r"cond of shape \(B,\)"),
        ((2, 8, 8, 1), np.zeros(2, np.float32), "integer level index"),
        ((2, 10, 8, 1), np.zeros(2, np.int32), "10x8 must divide by 4"),
    ],
)
def test_bad_inputs_raise_value_error(x_shape, cond, match):
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(NCSNv2Deeper(ngf=8, num_classes=10).init, jax.random.key(0), jnp.zeros(x_shape), cond)
