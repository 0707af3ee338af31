"""NCSNv2's "deeper" RefineNet with conditional InstanceNorm++ over the noise-level index (Flax linen).

``NCSNv2Deeper(...)(x, cond, train=...)`` maps an input ``(B, H, W, C)`` and an integer level index
``(B,)`` in ``[0, num_classes)`` to an output ``(B, H, W, C)`` (float32). It knows nothing of the
diffusion: what it is fed and how its output becomes a score is the parametrisation in
:mod:`dale_langevin.losses` (``conditioning = "level_index"``).

The architecture is that of NCSNv2's ``NCSNv2Deeper`` (Song & Ermon, 2020), which the paper trained
on the 28x28 datasets (MNIST, Fashion-MNIST, KMNIST) with ``ngf = 128`` and ELU; on a 28x28 input
(``F = ngf``):

* ``begin_conv``: 3x3 conv ``C -> F``.
* five stages of two residual blocks (``res1`` ... ``res5``); the first block of stages 2-5
  resamples ``down``::

      res1  F   28x28
      res2  2F  14x14   (conv then 2x2 mean pool)
      res3  2F   7x7    (conv then 2x2 mean pool)
      res4  4F   7x7    (dilation 2: dilated convs, no spatial reduction)
      res5  4F   7x7    (dilation 4: dilated convs, no spatial reduction)

* five RefineNet blocks from coarse to fine: ``refine1(res5) -> 4F``, ``refine2(res4, refine1)
  -> 2F``, ``refine3(res3, refine2) -> 2F``, ``refine4(res2, refine3) -> F``, ``refine5(res1,
  refine4) -> F`` at the input's resolution;
* ``normalizer`` (conditional InstanceNorm++), ELU, ``end_conv``: 3x3 conv ``F -> C``.

Only the first two stages reduce the resolution, so an input whose sides divide by 4 never meets a
mean pool on an odd size.

How it differs from the reference (``ermongroup/ncsnv2``, ``models/ncsnv2.py``):

* Normalisation is *conditional* InstanceNorm++ (NCSN v1's ``ConditionalInstanceNorm2dPlus``, one
  learnt ``(gamma, alpha, beta)`` per channel and noise-level index), as the paper's authors used,
  instead of NCSNv2's unconditional InstanceNorm++; accordingly there is no division of the output
  by ``sigma`` (the noise level reaches the network only through the norms). The conditional norms
  replace the norms of the residual blocks and the final ``normalizer``; the RefineNet blocks keep
  NCSNv2's norm-free layout (max-pooling CRP, bias-free RCU and CRP convs).
* NHWC layout (the reference is NCHW); parameters are Flax's (``kernel`` ``(kh, kw, in, out)``).
* Initialisation: Flax's defaults for the convolutions (LeCun normal kernels, zero biases), not
  PyTorch's; the norms' embeddings as in the reference (``gamma``, ``alpha`` ~ N(1, 0.02), ``beta``
  0).
* No spectral norm option, no 28x28 ``adjust_padding`` branch (the "deeper" network never uses it).
"""

from __future__ import annotations

import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dale_langevin.nets.unet import ConvFn

# (width multiplier of ngf, first block resamples down, dilation) of the five residual stages.
STAGES = ((1, False, 1), (2, True, 1), (2, True, 1), (4, True, 2), (4, True, 4))
# (width multiplier of ngf) of the refine blocks refine1 .. refine5 (refine1 reads res5, refine5 res1).
REFINE_WIDTHS = (4, 2, 2, 1, 1)
NORM_EPS = 1e-5


def _conv(
    features: int, kernel: int, conv: ConvFn, dtype, *, use_bias: bool = True, dilation: int = 1, name=None
) -> nn.Conv:
    """A ``kernel x kernel`` stride-1 ``nn.Conv`` with SAME padding (``dilation`` on the kernel), computed by ``conv``."""
    return nn.Conv(
        features,
        (kernel, kernel),
        padding="SAME",
        kernel_dilation=(dilation, dilation),
        use_bias=use_bias,
        dtype=dtype,
        conv_general_dilated=conv,
        name=name,
    )


def mean_pool2(x: jax.Array) -> jax.Array:
    """2x2 mean pool ``(B, H, W, C) -> (B, H/2, W/2, C)``: the mean of the four stride-2 sub-grids (even ``H``, ``W``)."""
    b, h, w, c = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"mean pool needs even spatial sides, got {h}x{w}")
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _align_corners_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` linear interpolation weights with the end points aligned (``align_corners=True``)."""
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def resize_bilinear_align_corners(x: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """Bilinear resize ``(B, H, W, C) -> (B, *shape, C)`` with corner pixels aligned.

    PyTorch's ``F.interpolate(mode="bilinear", align_corners=True)``; ``jax.image.resize`` uses half-pixel
    centres instead. Separable, as two small matmuls; the identity when the shape is unchanged.
    """
    if tuple(x.shape[1:3]) == tuple(shape):
        return x
    rows = jnp.asarray(_align_corners_matrix(shape[0], x.shape[1]), x.dtype)
    cols = jnp.asarray(_align_corners_matrix(shape[1], x.shape[2]), x.dtype)
    return jnp.einsum("pw,bowc->bopc", cols, jnp.einsum("oh,bhwc->bowc", rows, x))


def _cin_embedding_init(key: jax.Array, shape: tuple[int, int], dtype=jnp.float32) -> jax.Array:
    """``(num_classes, 3C)``: ``gamma`` and ``alpha`` (first ``2C``) ~ N(1, 0.02), ``beta`` (last ``C``) zero."""
    n, c3 = shape
    c = c3 // 3
    scales = 1.0 + 0.02 * jax.random.normal(key, (n, 2 * c), dtype)
    return jnp.concatenate([scales, jnp.zeros((n, c), dtype)], axis=1)


class ConditionalInstanceNormPlus(nn.Module):
    """Conditional InstanceNorm++ of ``(B, H, W, C)`` with per-class ``(gamma, alpha, beta)``; ``C >= 2``.

    For example ``b`` with class ``k = cond[b]``, channel ``c``, spatial mean ``mu_c`` and biased
    spatial variance ``s2_c``::

        m_c   = (mu_c - mean_c' mu_c') / sqrt(var_c' mu_c' + eps)     (var over channels: unbiased, / (C - 1))
        h     = (x - mu_c) / sqrt(s2_c + eps) + alpha[k, c] * m_c
        out   = gamma[k, c] * h + beta[k, c]

    ``eps = 1e-5``. The parameter ``embedding`` ``(num_classes, 3C)`` holds ``[gamma | alpha | beta]``.
    Statistics are per example (nothing is shared across the batch), in float32; the output has ``dtype``.
    An index outside ``[0, num_classes)`` gives NaN (``jnp.take``'s fill), not a silent clip.
    """

    num_classes: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        c = x.shape[-1]
        if c < 2:
            raise ValueError(
                f"ConditionalInstanceNormPlus needs at least 2 channels (variance across channels), got {c}"
            )
        table = self.param("embedding", _cin_embedding_init, (self.num_classes, 3 * c), jnp.float32)
        gamma, alpha, beta = jnp.split(jnp.take(table, cond, axis=0), 3, axis=-1)  # (B, C) each
        x32 = x.astype(jnp.float32)
        mu = x32.mean(axis=(1, 2))  # (B, C)
        s2 = jnp.square(x32 - mu[:, None, None, :]).mean(axis=(1, 2))
        m = (mu - mu.mean(-1, keepdims=True)) * jax.lax.rsqrt(jnp.var(mu, axis=-1, ddof=1, keepdims=True) + NORM_EPS)
        scale = gamma * jax.lax.rsqrt(s2 + NORM_EPS)  # out = x * scale + shift
        shift = gamma * (alpha * m - mu * jax.lax.rsqrt(s2 + NORM_EPS)) + beta
        return (x32 * scale[:, None, None, :] + shift[:, None, None, :]).astype(self.dtype)


class ResidualBlock(nn.Module):
    """norm-ELU-conv-norm-ELU-conv plus a shortcut, with conditional InstanceNorm++.

    ``down`` without dilation: 3x3 conv ``C_in -> C_in``, then 3x3 conv ``C_in -> out_channels``
    followed by a 2x2 mean pool; the shortcut is a 1x1 conv followed by the same pool. ``down`` with
    ``dilation > 1``: the same with dilated 3x3 convs, no pooling, and a dilated 3x3 conv as the
    shortcut. No resampling: 3x3 convs ``C_in -> out -> out`` (dilated if asked); the shortcut is the
    identity when the width is kept (else a 1x1 conv, or a dilated 3x3 one). All convs have biases.
    """

    out_channels: int
    num_classes: int
    down: bool = False
    dilation: int = 1
    dtype: jnp.dtype = jnp.float32
    conv: ConvFn = None

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        cin, d = x.shape[-1], self.dilation
        mid = cin if self.down else self.out_channels
        pool = mean_pool2 if self.down and d == 1 else (lambda v: v)
        norm = lambda name: ConditionalInstanceNormPlus(self.num_classes, self.dtype, name=name)
        h = nn.elu(norm("norm1")(x, cond))
        h = _conv(mid, 3, self.conv, self.dtype, dilation=d, name="conv1")(h)
        h = nn.elu(norm("norm2")(h, cond))
        h = pool(_conv(self.out_channels, 3, self.conv, self.dtype, dilation=d, name="conv2")(h))
        if self.down or cin != self.out_channels:
            k = 3 if d > 1 else 1
            x = pool(_conv(self.out_channels, k, self.conv, self.dtype, dilation=d, name="shortcut")(x))
        return x + h


class RCUBlock(nn.Module):
    """Residual conv units: ``n_blocks`` times ``x + (ELU-conv)^n_stages(x)``; bias-free 3x3 convs of constant width."""

    n_blocks: int
    n_stages: int = 2
    dtype: jnp.dtype = jnp.float32
    conv: ConvFn = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.n_blocks):
            h = x
            for j in range(self.n_stages):
                h = _conv(x.shape[-1], 3, self.conv, self.dtype, use_bias=False, name=f"conv_{i}_{j}")(nn.elu(h))
            x = x + h
        return x


class CRPBlock(nn.Module):
    """Chained residual pooling: ``x = ELU(x)``, then ``n_stages`` times ``path = conv(maxpool5x5(path)); x += path``.

    The max pool is 5x5, stride 1, padding 2 (padding never wins the max); the 3x3 convs are bias-free.
    """

    n_stages: int = 2
    dtype: jnp.dtype = jnp.float32
    conv: ConvFn = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.elu(x)
        path = x
        for i in range(self.n_stages):
            path = nn.max_pool(path, (5, 5), strides=(1, 1), padding=((2, 2), (2, 2)))
            path = _conv(x.shape[-1], 3, self.conv, self.dtype, use_bias=False, name=f"conv_{i}")(path)
            x = x + path
        return x


class RefineBlock(nn.Module):
    """RefineNet block: per-input RCU (2 blocks of 2 stages), multi-resolution fusion, CRP, output RCU.

    Fusion (with two or more inputs): each input goes through a 3x3 conv with bias to ``features``
    and a bilinear resize (corners aligned) to ``shape``, and they are summed. A ``start`` block has
    one input of width ``features`` and no fusion. The output RCU has 3 blocks if ``end``, else 1.
    """

    features: int
    start: bool = False
    end: bool = False
    dtype: jnp.dtype = jnp.float32
    conv: ConvFn = None

    @nn.compact
    def __call__(self, xs: list[jax.Array], shape: tuple[int, int]) -> jax.Array:
        hs = [RCUBlock(2, 2, self.dtype, self.conv, name=f"adapt_{i}")(x) for i, x in enumerate(xs)]
        if self.start:
            if len(hs) != 1 or hs[0].shape[-1] != self.features:
                raise ValueError(f"a start RefineBlock takes one input of width {self.features}")
            h = hs[0]
        else:
            h = sum(
                resize_bilinear_align_corners(
                    _conv(self.features, 3, self.conv, self.dtype, name=f"msf_conv_{i}")(hi), shape
                )
                for i, hi in enumerate(hs)
            )
        h = CRPBlock(2, self.dtype, self.conv, name="crp")(h)
        return RCUBlock(3 if self.end else 1, 2, self.dtype, self.conv, name="output")(h)


class NCSNv2Deeper(nn.Module):
    """NCSNv2 "deeper" RefineNet with conditional InstanceNorm++ (see the module docstring for the layout).

    Attributes:
      ngf: base width ``F``; the stages have widths ``F, 2F, 2F, 4F, 4F`` (the paper: 128).
      num_classes: the number of noise levels the conditional norms embed (the paper: 1000); ``cond``
        indexes them.
      rescale_input: map the input to ``2x - 1`` first (the reference's default for data in ``[0, 1]``;
        turn it off for inputs already centred, e.g. the ``log_noise`` parametrisation's ``log x_t``).
      dtype: computation dtype; parameters and normalisation statistics stay float32 and the output
        is returned as float32.
      conv: the function that computes every convolution (dilated ones included), a drop-in for
        ``lax.conv_general_dilated`` (``None``: that op), as for
        :class:`~dale_langevin.nets.unet.ScoreUNet`; parameters and values are the same whichever it is.

    ``conditioning = "level_index"``: the trainer feeds an int32 level index ``(B,)``.
    """

    conditioning: ClassVar[str] = "level_index"

    ngf: int = 128
    num_classes: int = 1000
    rescale_input: bool = True
    dtype: jnp.dtype = jnp.float32
    conv: ConvFn = None

    def check_inputs(self, x: jax.Array, cond: jax.Array) -> None:
        """Raises ``ValueError`` naming what the network cannot run with; ``x`` and ``cond`` may be
        ``jax.ShapeDtypeStruct``s (the config check runs it without building anything)."""
        if x.ndim != 4:
            raise ValueError(f"NCSNv2Deeper: expected x of shape (B, H, W, C), got {x.shape}")
        if cond.shape != x.shape[:1]:
            raise ValueError(f"NCSNv2Deeper: expected cond of shape (B,) = {x.shape[:1]}, got {cond.shape}")
        if not jnp.issubdtype(cond.dtype, jnp.integer):
            raise ValueError(f"NCSNv2Deeper: cond must be an integer level index, got dtype {cond.dtype}")
        if x.shape[1] % 4 or x.shape[2] % 4:
            raise ValueError(
                f"NCSNv2Deeper: image size {x.shape[1]}x{x.shape[2]} must divide by 4 (two 2x2 mean pools)"
            )

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array, *, train: bool = False) -> jax.Array:
        """``x`` ``(B, H, W, C)`` float, ``cond`` ``(B,)`` int in ``[0, num_classes)`` -> ``(B, H, W, C)`` float32.

        ``H`` and ``W`` must divide by 4 (two 2x2 mean pools). ``train`` is accepted for the trainer's
        interface and unused: the network has no dropout and no batch statistics.
        """
        del train
        self.check_inputs(x, cond)

        conv = lambda features, name: _conv(features, 3, self.conv, self.dtype, name=name)
        h = x.astype(jnp.float32)
        h = (2.0 * h - 1.0 if self.rescale_input else h).astype(self.dtype)
        h = conv(self.ngf, "begin_conv")(h)

        layers = []
        for s, (mult, down, dilation) in enumerate(STAGES, start=1):
            for b in range(2):
                h = ResidualBlock(
                    mult * self.ngf,
                    self.num_classes,
                    down=down and b == 0,
                    dilation=dilation,
                    dtype=self.dtype,
                    conv=self.conv,
                    name=f"res{s}_{b}",
                )(h, cond)
            layers.append(h)

        ref = None
        for r, mult in enumerate(REFINE_WIDTHS, start=1):
            skip = layers[-r]
            block = RefineBlock(
                mult * self.ngf,
                start=r == 1,
                end=r == len(REFINE_WIDTHS),
                dtype=self.dtype,
                conv=self.conv,
                name=f"refine{r}",
            )
            ref = block([skip] if ref is None else [skip, ref], skip.shape[1:3])

        h = nn.elu(ConditionalInstanceNormPlus(self.num_classes, self.dtype, name="normalizer")(ref, cond))
        out = conv(x.shape[-1], "end_conv")(h)
        return out.astype(jnp.float32)


def count_params(params) -> int:
    """The number of scalars in a parameter tree (arrays or ``ShapeDtypeStruct``s)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))
