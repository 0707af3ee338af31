"""nets/ncsnpp.py: the NCSN++/DDPM++ U-Net. Parameter count of the published deep CIFAR-10 networks
(counted here layer by layer, independently of the module), pmap forward/backward, conditioning,
dropout, FIR resampling and input validation. Compiled tests use a tiny net on 16x16x3."""

import math

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dale_langevin.cpu import conv as cpu_conv
from dale_langevin.nets.ncsnpp import NCSNpp, downsample_fir, positional_embedding, upsample_fir

TINY = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))
SHAPE = (16, 16, 3)


# ------------------------------------------------------------------------------------ parameter count
def _conv(k: int, c_in: int, c_out: int) -> int:
    return k * k * c_in * c_out + c_out  # every conv has a bias


def _dense(c_in: int, c_out: int) -> int:
    return c_in * c_out + c_out  # nn.Linear and the attention NIN layers (W, b)


def _norm(c: int) -> int:
    return 2 * c  # GroupNorm affine: scale and bias per channel


def _resblock(c_in: int, c_out: int, temb: int, resample: bool = False) -> int:
    """BigGAN block: GN, conv3x3, Dense(temb), GN, conv3x3, and a 1x1 shortcut if channels change or it resamples."""
    n = _norm(c_in) + _conv(3, c_in, c_out) + _dense(temb, c_out) + _norm(c_out) + _conv(3, c_out, c_out)
    return n + (_conv(1, c_in, c_out) if c_in != c_out or resample else 0)


def _attn(c: int) -> int:
    return _norm(c) + 4 * _dense(c, c)  # GN, q, k, v, out


def published_count(*, image=32, channels=3, nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=8, attn_res=(16,),
                    embedding="positional", progressive_input="none") -> int:  # fmt: skip
    """Parameters of score_sde's NCSNpp (BigGAN blocks, progressive='none') from its architecture.

    The Fourier frequencies (``nf`` of them, a ``requires_grad=False`` parameter in the reference,
    a stop-gradient ``params`` leaf here) are counted: the reference's ``parameters()`` holds them too.
    """
    temb = 4 * nf
    n = nf + _dense(2 * nf, temb) if embedding == "fourier" else _dense(nf, temb)
    n += _dense(temb, temb)
    n += _conv(3, channels, nf)
    ch, skips, pyramid = nf, [nf], channels
    for i, mult in enumerate(ch_mult):
        for _ in range(num_res_blocks):
            n += _resblock(ch, nf * mult, temb)
            ch = nf * mult
            n += _attn(ch) if image // 2**i in attn_res else 0
            skips.append(ch)
        if i != len(ch_mult) - 1:
            n += _resblock(ch, ch, temb, resample=True)
            if progressive_input == "residual":  # pyramid downsampling conv3x3 from the previous pyramid width
                n += _conv(3, pyramid, ch)
                pyramid = ch
            skips.append(ch)
    n += 2 * _resblock(ch, ch, temb) + _attn(ch)
    for i, mult in reversed(list(enumerate(ch_mult))):
        for _ in range(num_res_blocks + 1):
            n += _resblock(ch + skips.pop(), nf * mult, temb)
            ch = nf * mult
        n += _attn(ch) if image // 2**i in attn_res else 0  # once per level on the way up
        if i != 0:
            n += _resblock(ch, ch, temb, resample=True)
    assert not skips
    return n + _norm(ch) + _conv(3, ch, channels)


def _n_params(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "kwargs, published, reference",
    [
        pytest.param(dict(embedding="positional"), dict(embedding="positional"), 106_632_579, id="ddpmpp_deep"),
        pytest.param(dict(embedding="fourier"), dict(embedding="fourier"), 106_698_243, id="ddpmpp_deep_fourier"),
        pytest.param(
            dict(embedding="fourier", fir=True, progressive_input="residual"),
            dict(embedding="fourier", progressive_input="residual"),
            107_587_075,
            id="ncsnpp_deep",
        ),
    ],
)
def test_parameter_count_of_the_deep_cifar10_networks(kwargs, published, reference):
    """``reference``: ``sum(p.numel() for p in model.parameters())`` of score_sde_pytorch's NCSNpp, measured once."""
    model = NCSNpp(**kwargs)  # the class defaults: nf 128, ch_mult (1, 2, 2, 2), 8 blocks, attention at 16
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,)))
    assert set(shapes) == {"params"}
    n = _n_params(shapes)
    assert n == published_count(**published) == reference
    fourier = [p for p, _ in jax.tree_util.tree_leaves_with_path(shapes) if "GaussianFourierProjection" in str(p)]
    assert len(fourier) == (kwargs["embedding"] == "fourier")


# ------------------------------------------------------------------------------------ compiled tests
def _random_params(shapes, seed: int):
    """Random values of the ``eval_shape`` tree ``shapes``, drawn with NumPy (nothing to compile): kernels
    ``N(0, 1/fan_in)``, vectors ``N(0, 0.1**2)`` (GroupNorm scales around 1). Generic values: at init the
    layers that end a branch are ~1e-10 (init_scale 0), which would make the output and every
    gradient upstream of it nearly vanish."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        std = 1 / math.sqrt(math.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 0.1
        mean = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
        return jnp.asarray(rng.normal(mean, std, leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def tiny():
    """The tiny net as the trainer builds it on CPU, its real initial variables, random variables, a batch."""
    model = NCSNpp(**TINY, dropout=0.1, conv=cpu_conv.conv_materialized)
    args = (jax.random.key(0, impl="rbg"), jnp.zeros((1, *SHAPE)), jnp.zeros((1,)))
    variables = jax.jit(model.init)(*args)  # rbg: a few seconds to compile, threefry 3-5x that
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(4, *SHAPE)), jnp.float32)
    cond = jnp.array([-3.0, -1.0, 0.5, 1.5])
    return model, variables, _random_params(jax.eval_shape(model.init, *args), 2), x, cond


def test_forward_and_backward_under_pmap(tiny, n_devices):
    model, init_vars, params, x, cond = tiny
    assert n_devices >= 2, "tests/conftest.py forces 2 host devices"
    target = jnp.asarray(np.random.default_rng(3).normal(size=x.shape), jnp.float32)

    def loss_and_grad(p, xb, cb, tb, key):
        def loss(p):
            out = model.apply(p, xb, cb, train=True, rngs={"dropout": key})
            return jnp.mean((out - tb) ** 2), out

        (value, out), g = jax.value_and_grad(loss, has_aux=True)(p)
        return jax.lax.pmean(value, "d"), jax.lax.pmean(g, "d"), out

    step = jax.pmap(loss_and_grad, axis_name="d")
    shard = lambda a: a.reshape(n_devices, -1, *a.shape[1:])
    keys = jax.random.split(jax.random.key(4, impl="rbg"), n_devices)  # rbg: dropout masks compile faster
    rep = lambda tree: jax.tree.map(lambda a: jnp.broadcast_to(a, (n_devices, *a.shape)), tree)

    for variables, perturbed in ((params, True), (init_vars, False)):
        loss, grads, out = step(rep(variables), shard(x), shard(cond), shard(target), keys)
        chex.assert_shape(out, (n_devices, x.shape[0] // n_devices, *SHAPE))
        chex.assert_tree_all_finite((loss, grads, out))
        grads = jax.tree.map(lambda g: g[0], grads)  # pmean: every device holds the same
        flat = flax.traverse_util.flatten_dict(grads["params"], sep="/")
        assert flat.keys() == flax.traverse_util.flatten_dict(variables["params"], sep="/").keys()
        if perturbed:
            # Every leaf learns except the Fourier frequencies (stop_gradient: exactly zero).
            zero = sorted(k for k, g in flat.items() if not np.any(np.asarray(g)))
            fourier = sorted(k for k in flat if k.startswith("GaussianFourierProjection"))
            assert fourier == ["GaussianFourierProjection_0/W"]
            assert zero == fourier
        else:
            # At init the output conv (init_scale 0) is ~1e-10: the output is ~0, and the loss gradient
            # reaches its own kernel and bias fully, while upstream leaves see it scaled by ~1e-5.
            out_conv = max((k for k in flat if k.startswith("Conv_")), key=lambda k: int(k.split("/")[0][5:]))
            assert float(jnp.max(jnp.abs(out))) < 1e-3
            big = float(jnp.max(jnp.abs(flat[f"{out_conv.split('/')[0]}/kernel"])))
            upstream = max(float(jnp.max(jnp.abs(g))) for k, g in flat.items() if k.startswith("ResnetBlockBigGAN_0/"))
            assert big > 1e-2 and upstream < 1e-3 * big, (big, upstream)


@pytest.fixture(scope="module")
def apply_tiny(tiny):
    """Jitted ``apply`` of the tiny net with ``train`` True and False, both given a dropout rng."""
    model = tiny[0]
    return tuple(
        jax.jit(lambda v, x, c, key, train=train: model.apply(v, x, c, train=train, rngs={"dropout": key}))
        for train in (True, False)
    )


def test_conditioning_changes_the_output(tiny, apply_tiny):
    _, _, params, x, cond = tiny  # the default embedding, 'fourier'
    _, apply_eval = apply_tiny
    key = jax.random.key(0, impl="rbg")
    base = apply_eval(params, x, cond, key)
    shifted = apply_eval(params, x, cond + 0.3, key)
    diff = jnp.abs(shifted - base).mean(axis=(1, 2, 3))
    assert bool(jnp.all(diff > 1e-3 * jnp.abs(base).mean())), diff
    # Per example: changing one example's level changes only that example's output.
    one = apply_eval(params, x, cond.at[0].add(0.3), key)
    assert float(jnp.abs(one[0] - base[0]).max()) > 1e-3 * float(jnp.abs(base[0]).mean())
    chex.assert_trees_all_close(one[1:], base[1:], atol=1e-5)


# score_sde_pytorch's NCSNpp (nf 8, ch_mult (1, 2), 1 block, attention at 8, fourier, centered data),
# evaluated once with the tiny fixture's random variables copied in, on its x and sigma = exp(cond).
REFERENCE_VALUES = {
    (0, 0, 0, 0): 0.15219668,
    (1, 7, 8, 1): -0.43563130,
    (2, 15, 15, 2): -0.03334638,
    (3, 4, 11, 0): 0.15498289,
    (0, 9, 3, 2): 0.82754791,
    (3, 15, 0, 1): -0.29671913,
}
REFERENCE_MEAN_ABS = (0.49564514, 0.52042419, 0.49486753, 0.46658191)  # per example


def test_output_matches_the_reference_implementation(tiny, apply_tiny):
    """Values, not just shapes: attention scaling, skip order, rescaling, GroupNorm groups, resampling."""
    _, _, params, x, cond = tiny
    out = np.asarray(apply_tiny[1](params, x, cond, jax.random.key(0, impl="rbg")))
    got = {i: float(out[i]) for i in REFERENCE_VALUES}
    np.testing.assert_allclose(list(got.values()), list(REFERENCE_VALUES.values()), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.abs(out).mean(axis=(1, 2, 3)), REFERENCE_MEAN_ABS, rtol=1e-4)


def test_positional_embedding_is_ddpms():
    """Values of score_sde's ``get_timestep_embedding`` (frequencies ``10000 ** (-k / (half - 1))``)."""
    want = [
        [0.14112000, 0.13879810, 0.00646326, 0.00030000, -0.98999250, 0.99032068, 0.99997914, 0.99999994],
        [0.97844416, -0.90684050, 0.89740086, 0.05167697, -0.20651172, 0.42147398, 0.44121620, 0.99866384],
    ]
    np.testing.assert_allclose(positional_embedding(jnp.array([3.0, 517.0]), 8), want, atol=2e-6)
    odd = [[0.14112000, 0.02999550, 0.00030000, -0.98999250, 0.99955004, 0.99999994, 0.0]]
    np.testing.assert_allclose(positional_embedding(jnp.array([3.0]), 7), odd, atol=2e-6)


def test_positional_embedding_is_conditional_and_train_switches_only_dropout():
    model = NCSNpp(**TINY, dropout=0.0, embedding="positional")
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, *SHAPE)), jnp.float32)
    variables = _random_params(jax.eval_shape(model.init, jax.random.key(0), x, jnp.zeros((2,))), 2)
    apply = jax.jit(lambda c: model.apply(variables, x, c, train=True, rngs={"dropout": jax.random.key(1)}))
    a, b = apply(jnp.array([-1.0, -1.0])), apply(jnp.array([0.0, 1.0]))
    assert bool(jnp.all(jnp.abs(a - b).mean(axis=(1, 2, 3)) > 1e-4 * jnp.abs(a).mean()))
    # With rate 0, train=True gives what train=False gives: train switches dropout and nothing else.
    evaluate = jax.jit(lambda c: model.apply(variables, x, c, train=False))
    chex.assert_trees_all_close(a, evaluate(jnp.array([-1.0, -1.0])), atol=1e-5)


def test_dropout_only_in_training(tiny, apply_tiny):
    _, _, params, x, cond = tiny
    apply_train, apply_eval = apply_tiny
    k1, k2 = jax.random.key(5, impl="rbg"), jax.random.key(6, impl="rbg")
    t1, t1_again, t2 = (apply_train(params, x, cond, k) for k in (k1, k1, k2))
    chex.assert_trees_all_equal(t1, t1_again)  # the mask comes from the 'dropout' rng
    assert float(jnp.abs(t1 - t2).max()) > 1e-3  # different masks
    e1, e2 = apply_eval(params, x, cond, k1), apply_eval(params, x, cond, k2)
    chex.assert_trees_all_equal(e1, e2)  # train=False ignores the rng
    assert float(jnp.abs(t1 - e1).max()) > 1e-3  # train=True drops


# ------------------------------------------------------------------------------------ FIR resampling
def test_fir_resampling_is_the_stylegan2_filter():
    """[1, 3, 3, 1] taps, zero outside the image: upsample_2d gives (x[i-1] + 3 x[i]) / 4 and (3 x[i] + x[i+1]) / 4
    per axis; downsample_2d gives (x[2i-1] + 3 x[2i] + 3 x[2i+1] + x[2i+2]) / 8."""
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype(np.float32)

    def up1(v, axis):
        v = np.moveaxis(v, axis, 0)
        p = np.concatenate([np.zeros_like(v[:1]), v, np.zeros_like(v[:1])])
        out = np.empty((2 * v.shape[0], *v.shape[1:]), v.dtype)
        out[0::2], out[1::2] = (p[:-2] + 3 * p[1:-1]) / 4, (3 * p[1:-1] + p[2:]) / 4
        return np.moveaxis(out, 0, axis)

    def down1(v, axis):
        v = np.moveaxis(v, axis, 0)
        p = np.concatenate([np.zeros_like(v[:1]), v, np.zeros_like(v[:1])])
        out = (p[0:-2:2] + 3 * p[1:-1:2] + 3 * p[2::2] + p[3::2]) / 8
        return np.moveaxis(out, 0, axis)

    np.testing.assert_allclose(upsample_fir(jnp.asarray(x), (1, 3, 3, 1)), up1(up1(x, 1), 2), atol=1e-6)
    np.testing.assert_allclose(downsample_fir(jnp.asarray(x), (1, 3, 3, 1)), down1(down1(x, 1), 2), atol=1e-6)


# ------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "kwargs, x_shape, cond_shape, message",
    [
        ({}, (16, 16, 3), (1,), r"x must be \(B, H, W, C\), got shape \(16, 16, 3\)"),
        ({}, (2, 16, 16, 3), (2, 1), r"cond must be \(2,\).*got shape \(2, 1\)"),
        ({}, (2, 16, 16, 3), (3,), r"cond must be \(2,\).*got shape \(3,\)"),
        (dict(ch_mult=(1, 2, 2)), (1, 18, 16, 3), (1,), r"image size \(18, 16\) must be divisible by .* = 4"),
        (dict(ch_mult=(1, 2, 2)), (1, 16, 18, 3), (1,), r"image size \(16, 18\)"),
        (dict(embedding="gaussian"), (1, 16, 16, 3), (1,), r"embedding must be one of \('fourier', 'positional'\)"),
        (dict(progressive="skip"), (1, 16, 16, 3), (1,), r"progressive must be one of"),
        (dict(progressive_input="residuals"), (1, 16, 16, 3), (1,), r"progressive_input must be one of"),
        (dict(progressive_combine="mean"), (1, 16, 16, 3), (1,), r"progressive_combine must be one of"),
        (dict(nf=9), (1, 16, 16, 3), (1,), r"nf=9 .* gives 9 channels"),
        (dict(nf=2), (1, 16, 16, 3), (1,), r"nf=2 .* gives 2 channels"),
        (dict(ch_mult=()), (1, 16, 16, 3), (1,), r"ch_mult must be a non-empty"),
        (dict(fir=True, fir_kernel=(1, 2, 1)), (1, 16, 16, 3), (1,), r"fir_kernel must have an even length"),
    ],
)
def test_bad_inputs_raise_a_clear_error(kwargs, x_shape, cond_shape, message):
    model = NCSNpp(**{**TINY, **kwargs})
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(x_shape), jnp.zeros(cond_shape))


def test_valid_shapes_pass_validation():
    model = NCSNpp(**{**TINY, "ch_mult": (1, 2, 2)})
    out = jax.eval_shape(
        lambda: model.apply(model.init(jax.random.key(0), jnp.zeros((2, 12, 20, 1)), jnp.zeros((2,))),
                            jnp.zeros((2, 12, 20, 1)), jnp.zeros((2,)))
    )  # fmt: skip
    chex.assert_shape(out, (2, 12, 20, 1))
    assert out.dtype == jnp.float32
    assert NCSNpp.conditioning == "noise_level"
