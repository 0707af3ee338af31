"""NCSN++ / DDPM++ (Song et al. 2021, "Score-Based Generative Modeling through SDEs") in Flax linen.

``NCSNpp(...)(x, cond, train=...)`` maps an input ``x`` ``(B, H, W, C)`` and a per-example float
conditioning ``cond`` ``(B,)`` (the trainer feeds the continuous noise level ``log std_t``) to an
output ``(B, H, W, C)`` float32. Like :class:`dale_langevin.nets.unet.ScoreUNet` it knows nothing of
the diffusion: no division by ``sigma`` (the reference's ``scale_by_sigma``) and no ``log`` of the
conditioning happen inside; what the output means is the parametrisation in
:mod:`dale_langevin.losses`.

The network (our own code, written from the architecture of the reference ``score_sde`` models):

* conditioning embedding: ``'positional'``, the DDPM sinusoidal embedding of ``positional_scale *
  cond`` with ``nf`` features (frequencies ``10000 ** (-k / (nf/2 - 1))``); or ``'fourier'``, Gaussian
  Fourier features ``[sin, cos](2 pi cond W)`` with ``W ~ N(0, fourier_scale**2)`` of size ``nf``
  (``2 nf`` features; the reference projects ``log sigma``, which is what ``cond`` already is here).
  Then ``Dense(4 nf) -> SiLU -> Dense(4 nf)``; every residual block adds ``Dense(SiLU(temb))``.
* a 3x3 conv to ``nf``; per level ``i`` (resolution ``H / 2**i``, ``nf * ch_mult[i]`` channels)
  ``num_res_blocks`` BigGAN residual blocks, each followed by self-attention where the resolution is
  in ``attn_resolutions``, then (except at the last level) a BigGAN block that downsamples. The skip
  stack holds the first conv's output, every block's output (after its attention) and every
  downsampling block's output (after the input pyramid is merged in).
* middle: residual block, attention, residual block (attention whatever ``attn_resolutions`` says).
* per level on the way up ``num_res_blocks + 1`` residual blocks on ``concat([h, skip])``, then one
  attention (once per level, after the blocks) where the resolution is in ``attn_resolutions``,
  then (except at the top) a BigGAN block that upsamples.
* GroupNorm -> SiLU -> 3x3 conv to ``C`` (or the output pyramid with ``progressive='output_skip'``).

A BigGAN block is ``GN -> SiLU -> [resample] -> conv3x3 -> + Dense(SiLU(temb)) -> GN -> SiLU -> Dropout
-> conv3x3 (init_scale)``, plus a 1x1 conv shortcut (on the resampled input) when the channels change
or it resamples, the sum divided by ``sqrt(2)`` with ``skip_rescale``. Resampling without ``fir`` is
nearest upsampling / 2x2 average pooling, with ``fir`` the StyleGAN2 FIR filter ``fir_kernel``
(``upfirdn2d``). Attention (DDPM type) is single-head over the positions: GN, ``q, k, v`` by per-pixel
dense layers (NIN, initialised with scale 0.1), ``softmax(q k^T / sqrt(C)) v``, an output NIN
(``init_scale``), residual (divided by ``sqrt(2)`` with ``skip_rescale``). GroupNorm has ``min(C // 4,
32)`` groups and epsilon ``1e-6``. Every conv, dense and NIN layer has a bias, initialised to zero;
weights use the DDPM ``default_init(scale)``: variance scaling, fan_avg, uniform, where ``scale = 0``
means ``1e-10`` (so the "zero-initialised" layers, each block's second conv, the attention output
NIN and the output conv, are tiny but not exactly zero; that is the reference's behaviour).

Defaults: the DDPM++ "deep" CIFAR-10 network of ``configs/vp/cifar10_ddpmpp_deep_continuous.py``
(``nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=8, attn_resolutions=(16,), dropout=0.1``,
BigGAN blocks, ``fir=False``, ``progressive='none'``, ``progressive_input='none'``,
``skip_rescale=True``, ``init_scale=0``) except ``embedding='fourier'`` (that config says
``'positional'``; pass it for the exact DDPM++). The NCSN++ deep network
(``configs/ve/cifar10_ncsnpp_deep_continuous.py``) is ``embedding='fourier', fir=True,
progressive_input='residual'``. Parameters at 32x32x3, equal to the reference's
``sum(p.numel() for p in model.parameters())``:

==============================  ===========  =========================================
DDPM++ deep, ``'positional'``   106,632,579
DDPM++ deep, ``'fourier'``      106,698,243  of which the 128 Fourier frequencies fixed
NCSN++ deep                     107,587,075  of which the 128 Fourier frequencies fixed
==============================  ===========  =========================================

Submodules are named in the reference's module order, one counter per type (``ResnetBlockBigGAN_k``,
``AttnBlock_k``, ``Conv_k``, ...), with the reference's names inside (``GroupNorm_0``, ``Conv_0``,
``Dense_0``, ``NIN_0``..``NIN_3``, ...), so a reference state dict maps over by walking its
``all_modules`` in order (conv kernels transposed to HWIO, linear weights transposed; the reference's
``Upsample``/``Downsample`` with a conv are ``ResampleConv_k``, and a fused FIR up-conv's bias is
``ResampleConv_k/bias``, applied after the filter, not ``Conv_0/bias``).

Differences from the reference:

* ``cond`` is fed to the embedding as given: the reference's ``'fourier'`` takes ``log(sigma)`` of
  its input and ``'positional'`` an integer-valued time index (``999 t`` for continuous VP); here
  ``'positional'`` embeds ``positional_scale * cond`` (default 100, as
  :func:`~dale_langevin.nets.unet.sinusoidal_embedding`: ``log std_t`` spans a few units).
* the Fourier frequencies ``W`` are a ``params`` leaf ``GaussianFourierProjection_0/W`` (drawn at
  ``init``, saved with the checkpoint) used through ``stop_gradient``: their gradient is exactly zero,
  so Adam leaves them unchanged (weight decay would not; the trainer uses none). The PyTorch
  reference holds them in a ``requires_grad=False`` parameter, the JAX reference as here.
* only BigGAN residual blocks (``resblock_type='biggan'``), so ``resamp_with_conv`` has nothing to
  act on; no ``'ddpm'`` resblock type, no unconditional variant, GroupNorm only, SiLU only.
* attention applies where the height of the feature map (the resolution, for square images) is in
  ``attn_resolutions``.
* the pyramid up-convs (``progressive='residual'``) follow the JAX reference: the PyTorch port's
  ``Upsample`` with a conv fails (``F.interpolate`` gets the size as its scale factor; the fused FIR
  version uses a negative-stride flip and a 4-entry stride) and was fixed as evidently meant for
  the comparison below. The fused FIR up-conv is correlation with the kernel on the zero-stuffed
  input, then the filter, then the bias.
* ``dtype`` sets the computation dtype (parameters stay float32; GroupNorm statistics, the
  embedding's features and the attention softmax are float32); the output is float32.
* ``rescale_input`` (the reference's ``not data.centered``) maps ``x`` to ``2x - 1`` first.

Checked against the PyTorch reference (a one-off comparison outside the test suite, reference
weights copied over, perturbed so the near-zero layers count): equal parameter counts and outputs
within 3e-6 relative for nf 16, ch_mult (1, 2, 2), 2 blocks, 16x16x3, in 8 configurations: both
embeddings, with and without ``fir`` and ``rescale_input``, and every ``progressive`` x
``progressive_input`` kind used (``output_skip``/``input_skip`` with ``sum`` and ``cat``,
``residual``/``residual``, ``residual``/``input_skip``, ``residual``/``none``, ``none``/``residual``).
``tests/test_ncsnpp.py`` keeps a few of the reference's output values for a tiny net.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dale_langevin.nets.unet import ConvFn, GroupNorm

EMBEDDINGS = ("fourier", "positional")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
COMBINE = ("sum", "cat")


def default_init(scale: float = 1.0) -> nn.initializers.Initializer:
    """DDPM's initialiser: variance scaling with ``scale`` (0 means 1e-10), fan_avg, uniform."""
    return nn.initializers.variance_scaling(1e-10 if scale == 0 else scale, "fan_avg", "uniform")


def num_groups(channels: int) -> int:
    """GroupNorm groups of the reference: ``min(channels // 4, 32)``."""
    return min(channels // 4, 32)


def positional_embedding(t: jax.Array, dim: int, max_positions: float = 1e4) -> jax.Array:
    """DDPM timestep embedding of ``t`` ``(B,)`` -> ``(B, dim)``: ``[sin, cos](t * f_k)``,
    ``f_k = max_positions ** (-k / (dim/2 - 1))``, ``k < dim/2``; a zero column is appended for odd ``dim``."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_positions) / max(half - 1, 1) * jnp.arange(half, dtype=jnp.float32))
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


# ----------------------------------------------------------------------------------------- resampling
def _fir_taps(kernel: Sequence[float], gain: float) -> np.ndarray:
    """The separable 1-D taps of the 2-D filter ``outer(k, k) / sum(outer(k, k)) * gain``."""
    k = np.asarray(kernel, np.float64)
    return k / k.sum() * math.sqrt(gain)


def _pad_axis(x: jax.Array, axis: int, lo: int, hi: int) -> jax.Array:
    """Zero-pads ``x`` on ``axis`` by ``lo`` / ``hi`` (negative: crops)."""
    if lo < 0 or hi < 0:
        x = jax.lax.slice_in_dim(x, max(-lo, 0), x.shape[axis] - max(-hi, 0), axis=axis)
    widths = [(0, 0)] * x.ndim
    widths[axis] = (max(lo, 0), max(hi, 0))
    return jnp.pad(x, widths)


def _fir_axis(x: jax.Array, taps: np.ndarray, axis: int, pad: tuple[int, int], down: int = 1) -> jax.Array:
    """``upfirdn`` along one axis without the up step: pad, filter with ``taps``, keep every ``down``-th."""
    x = _pad_axis(x, axis, *pad)
    n_out = (x.shape[axis] - len(taps)) // down + 1
    out = 0.0
    for j, tap in enumerate(taps[::-1]):  # upfirdn2d convolves (flips the kernel); the taps are symmetric anyway
        window = jax.lax.slice_in_dim(x, j, j + down * (n_out - 1) + 1, stride=down, axis=axis)
        out = out + float(tap) * window
    return out.astype(x.dtype)


def _fir_2d(x: jax.Array, taps: np.ndarray, pad: tuple[int, int], down: int = 1) -> jax.Array:
    return _fir_axis(_fir_axis(x, taps, 1, pad, down), taps, 2, pad, down)


def _zero_stuff(x: jax.Array) -> jax.Array:
    """``(B, H, W, C) -> (B, 2H, 2W, C)`` with ``x`` at even positions and zeros elsewhere."""
    b, h, w, c = x.shape
    z = jnp.zeros_like(x)
    x = jnp.stack([jnp.stack([x, z], axis=3), jnp.stack([z, z], axis=3)], axis=2)  # (B, H, 2, W, 2, C)
    return x.reshape(b, 2 * h, 2 * w, c)


def upsample_fir(x: jax.Array, kernel: Sequence[float]) -> jax.Array:
    """StyleGAN2 ``upsample_2d``: zero-stuff by 2 and filter (gain 4). ``(B, H, W, C) -> (B, 2H, 2W, C)``."""
    p = len(kernel) - 2
    return _fir_2d(_zero_stuff(x), _fir_taps(kernel, 4.0), ((p + 1) // 2 + 1, p // 2))


def downsample_fir(x: jax.Array, kernel: Sequence[float]) -> jax.Array:
    """StyleGAN2 ``downsample_2d``: filter and keep every second pixel. ``(B, H, W, C) -> (B, H/2, W/2, C)``."""
    p = len(kernel) - 2
    return _fir_2d(x, _fir_taps(kernel, 1.0), ((p + 1) // 2, p // 2), down=2)


def upsample_nearest(x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


def downsample_mean(x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


# ----------------------------------------------------------------------------------------- layers
def _conv(features: int, kernel: int, conv: ConvFn, dtype, init_scale: float = 1.0, **kwargs) -> nn.Conv:
    """A ``kernel x kernel`` conv with bias (zeros) and ``default_init(init_scale)`` weights, computed by ``conv``."""
    return nn.Conv(
        features,
        (kernel, kernel),
        kernel_init=default_init(init_scale),
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        conv_general_dilated=conv,
        **kwargs,
    )


def _dense(features: int, dtype, init_scale: float = 1.0, name: str | None = None) -> nn.Dense:
    return nn.Dense(features, kernel_init=default_init(init_scale), dtype=dtype, name=name)


def _norm(channels: int, dtype, name: str | None = None) -> GroupNorm:
    return GroupNorm(num_groups(channels), epsilon=1e-6, dtype=dtype, name=name)


def resample(x: jax.Array, up: bool, fir: bool, fir_kernel: Sequence[int]) -> jax.Array:
    """Parameter-free 2x resampling of ``(B, H, W, C)``: FIR (``fir_kernel``) or nearest / 2x2 average."""
    if fir:
        return upsample_fir(x, fir_kernel) if up else downsample_fir(x, fir_kernel)
    return upsample_nearest(x) if up else downsample_mean(x)


class ResampleConv(nn.Module):
    """Up- or downsampling by 2 with a 3x3 conv to ``out_ch`` (the progressive ``'residual'`` pyramids).

    Up: nearest then conv, or with ``fir`` the fused up-conv (correlation with the kernel on the
    zero-stuffed input padded by 2, then the filter, then the bias: ``Conv_0`` has no bias of its own
    and the block holds ``bias``). Down: a stride-2 conv on the input padded by
    one row and column at the end, or with ``fir`` the filter then a stride-2 VALID conv.
    """

    up: bool
    out_ch: int | None = None
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    dtype: jnp.dtype = jnp.float32
    conv: ConvFn = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out_ch = self.out_ch or x.shape[-1]
        n = len(self.fir_kernel)
        if self.up and not self.fir:
            return _conv(out_ch, 3, self.conv, self.dtype, name="Conv_0")(upsample_nearest(x))
        if not self.fir:
            return _conv(out_ch, 3, self.conv, self.dtype, strides=(2, 2), padding=((0, 1), (0, 1)), name="Conv_0")(x)
        if self.up:  # the bias goes after the filter (which does not preserve constants at the border)
            dilated = dict(input_dilation=(2, 2), padding=((2, 2), (2, 2)), use_bias=False, name="Conv_0")
            h = _conv(out_ch, 3, self.conv, self.dtype, **dilated)(x)
            p = n - 2 - 2
            h = _fir_2d(h, _fir_taps(self.fir_kernel, 4.0), ((p + 1) // 2 + 1, p // 2 + 1))
            return h + self.param("bias", nn.initializers.zeros, (out_ch,), jnp.float32).astype(self.dtype)
        p = n - 2 + 2
        h = _fir_2d(x, _fir_taps(self.fir_kernel, 1.0), ((p + 1) // 2, p // 2))
        return _conv(out_ch, 3, self.conv, self.dtype, strides=(2, 2), padding="VALID", name="Conv_0")(h)


class ResnetBlockBigGAN(nn.Module):
    """BigGAN-type residual block with the embedding added after the first conv (see the module docstring)."""

    out_ch: int | None = None
    up: bool = False
    down: bool = False
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0
    dtype: jnp.dtype = jnp.float32
    conv: ConvFn = None

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array, *, train: bool) -> jax.Array:
        in_ch = x.shape[-1]
        out_ch = self.out_ch or in_ch
        h = nn.silu(_norm(in_ch, self.dtype, "GroupNorm_0")(x))
        if self.up or self.down:
            h = resample(h, self.up, self.fir, self.fir_kernel)
            x = resample(x, self.up, self.fir, self.fir_kernel)
        h = _conv(out_ch, 3, self.conv, self.dtype, name="Conv_0")(h)
        h = h + _dense(out_ch, self.dtype, name="Dense_0")(nn.silu(temb))[:, None, None, :]
        h = nn.silu(_norm(out_ch, self.dtype, "GroupNorm_1")(h))
        h = nn.Dropout(self.dropout, deterministic=not train, name="Dropout_0")(h)
        h = _conv(out_ch, 3, self.conv, self.dtype, self.init_scale, name="Conv_1")(h)
        if in_ch != out_ch or self.up or self.down:
            x = _conv(out_ch, 1, self.conv, self.dtype, name="Conv_2")(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class AttnBlock(nn.Module):
    """DDPM-type single-head self-attention over the positions, residual (see the module docstring)."""

    skip_rescale: bool = True
    init_scale: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, hgt, wid, c = x.shape
        h = _norm(c, self.dtype, "GroupNorm_0")(x).reshape(b, hgt * wid, c)
        q, k, v = (_dense(c, self.dtype, 0.1, f"NIN_{i}")(h) for i in range(3))
        logits = jnp.einsum("bic,bjc->bij", q, k).astype(jnp.float32) * c**-0.5
        w = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        h = _dense(c, self.dtype, self.init_scale, "NIN_3")(jnp.einsum("bij,bjc->bic", w, v))
        h = h.reshape(b, hgt, wid, c)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class GaussianFourierProjection(nn.Module):
    """``t`` ``(B,)`` -> ``[sin(2 pi t W), cos(2 pi t W)]`` ``(B, 2 size)``, ``W ~ N(0, scale**2)`` never trained."""

    size: int
    scale: float

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        w = self.param("W", nn.initializers.normal(stddev=self.scale), (self.size,), jnp.float32)
        proj = t.astype(jnp.float32)[:, None] * jax.lax.stop_gradient(w)[None, :] * (2.0 * math.pi)
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class Combine(nn.Module):
    """Merges the input pyramid ``x`` into ``y``: ``conv1x1(x) + y`` (``'sum'``) or ``concat`` (``'cat'``)."""

    method: str = "sum"
    dtype: jnp.dtype = jnp.float32
    conv: ConvFn = None

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        h = _conv(y.shape[-1], 1, self.conv, self.dtype, name="Conv_0")(x)
        return jnp.concatenate([h, y], axis=-1) if self.method == "cat" else h + y


# ----------------------------------------------------------------------------------------- network
class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ score network (module docstring: architecture, defaults, parameter counts).

    Attributes:
      nf: base width; level ``i`` has ``nf * ch_mult[i]`` channels; the embedding has ``4 nf``.
      ch_mult: width multipliers, one per resolution (halved between levels).
      num_res_blocks: residual blocks per level on the way down (``num_res_blocks + 1`` on the way up).
      attn_resolutions: feature-map sizes that get self-attention (``(16,)`` for 32x32 input).
      dropout: rate inside residual blocks, active only with ``train=True`` (rng ``'dropout'``).
      embedding: ``'fourier'`` or ``'positional'``.
      fourier_scale: standard deviation of the Fourier frequencies.
      positional_scale: ``'positional'`` embeds ``positional_scale * cond``.
      skip_rescale: divide residual sums by ``sqrt(2)``.
      rescale_input: map ``x`` to ``2x - 1`` first (data in ``[0, 1]``).
      init_scale: ``default_init`` scale of the layers that end a residual branch (0: 1e-10).
      fir: FIR (``fir_kernel``) resampling instead of nearest/average; fir_kernel: its 1-D taps.
      progressive: output pyramid, ``'none'``, ``'output_skip'`` or ``'residual'``.
      progressive_input: input pyramid, ``'none'``, ``'input_skip'`` or ``'residual'``.
      progressive_combine: how ``'input_skip'`` merges, ``'sum'`` or ``'cat'``.
      dtype: computation dtype; parameters stay float32, the output is float32.
      conv: drop-in for ``lax.conv_general_dilated`` used by every ``nn.Conv`` (``None``: the stock op).
    """

    conditioning: ClassVar[str] = "noise_level"

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 8
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    embedding: str = "fourier"
    fourier_scale: float = 16.0
    positional_scale: float = 100.0
    skip_rescale: bool = True
    rescale_input: bool = False
    init_scale: float = 0.0
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    progressive: str = "none"
    progressive_input: str = "none"
    progressive_combine: str = "sum"
    dtype: jnp.dtype = jnp.float32
    conv: ConvFn = None

    def check_inputs(self, x: jax.Array, cond: jax.Array) -> None:
        """Raises ``ValueError`` naming the field or input the network cannot run with; ``x`` and ``cond``
        may be ``jax.ShapeDtypeStruct``s (the config check runs it without building anything)."""
        if x.ndim != 4:
            raise ValueError(f"NCSNpp: x must be (B, H, W, C), got shape {x.shape}")
        if cond.shape != x.shape[:1]:
            raise ValueError(
                f"NCSNpp: cond must be ({x.shape[0]},) (one level per example of x), got shape {cond.shape}"
            )
        for field, value, allowed in (
            ("embedding", self.embedding, EMBEDDINGS),
            ("progressive", self.progressive, PROGRESSIVE),
            ("progressive_input", self.progressive_input, PROGRESSIVE_INPUT),
            ("progressive_combine", self.progressive_combine, COMBINE),
        ):
            if value not in allowed:
                raise ValueError(f"NCSNpp: {field} must be one of {allowed}, got {value!r}")
        if not self.ch_mult or any(int(m) < 1 for m in self.ch_mult):
            raise ValueError(f"NCSNpp: ch_mult must be a non-empty sequence of positive ints, got {self.ch_mult}")
        if self.num_res_blocks < 0:
            raise ValueError(f"NCSNpp: num_res_blocks must be >= 0, got {self.num_res_blocks}")
        for c in sorted({self.nf * m for m in self.ch_mult}):
            if c < 4 or c % num_groups(c):
                raise ValueError(
                    f"NCSNpp: nf={self.nf} with ch_mult={tuple(self.ch_mult)} gives {c} channels, which GroupNorm's "
                    f"min(C // 4, 32) groups do not divide (need C >= 4 and C divisible by the group count)"
                )
        if self.fir and (len(self.fir_kernel) < 2 or len(self.fir_kernel) % 2):
            raise ValueError(f"NCSNpp: fir_kernel must have an even length >= 2, got {tuple(self.fir_kernel)}")
        factor = 2 ** (len(self.ch_mult) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"NCSNpp: image size {x.shape[1:3]} must be divisible by 2**(len(ch_mult)-1) = {factor} "
                f"for ch_mult={tuple(self.ch_mult)}"
            )

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array, *, train: bool = False) -> jax.Array:
        """``x`` ``(B, H, W, C)``, ``cond`` ``(B,)`` float -> ``(B, H, W, C)`` float32."""
        x, cond = jnp.asarray(x), jnp.asarray(cond)
        self.check_inputs(x, cond)
        nf, dtype, channels = self.nf, self.dtype, x.shape[-1]
        levels = len(self.ch_mult)

        if self.embedding == "fourier":
            temb = GaussianFourierProjection(nf, self.fourier_scale)(cond)
        else:
            temb = positional_embedding(self.positional_scale * cond.astype(jnp.float32), nf)
        temb = _dense(4 * nf, dtype)(temb)
        temb = _dense(4 * nf, dtype)(nn.silu(temb))

        def block(out_ch=None, up=False, down=False):
            return ResnetBlockBigGAN(
                out_ch, up, down, self.dropout, self.fir, tuple(self.fir_kernel), self.skip_rescale,
                self.init_scale, dtype, self.conv,
            )  # fmt: skip

        attn = lambda: AttnBlock(self.skip_rescale, self.init_scale, dtype)
        plain = lambda v, up: resample(v, up, self.fir, tuple(self.fir_kernel))
        resample_conv = lambda up, out_ch: ResampleConv(up, out_ch, self.fir, tuple(self.fir_kernel), dtype, self.conv)

        x = x.astype(dtype)
        if self.rescale_input:
            x = 2.0 * x - 1.0

        # Down.
        input_pyramid = x
        hs = [_conv(nf, 3, self.conv, dtype)(x)]
        for i_level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = block(nf * mult)(hs[-1], temb, train=train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn()(h)
                hs.append(h)
            if i_level != levels - 1:
                h = block(down=True)(hs[-1], temb, train=train)
                if self.progressive_input == "input_skip":
                    input_pyramid = plain(input_pyramid, up=False)
                    h = Combine(self.progressive_combine, dtype, self.conv)(input_pyramid, h)
                elif self.progressive_input == "residual":
                    input_pyramid = resample_conv(up=False, out_ch=h.shape[-1])(input_pyramid)
                    input_pyramid = (input_pyramid + h) / math.sqrt(2.0) if self.skip_rescale else input_pyramid + h
                    h = input_pyramid
                hs.append(h)

        # Middle.
        h = hs[-1]
        h = block()(h, temb, train=train)
        h = attn()(h)
        h = block()(h, temb, train=train)

        # Up.
        pyramid = None
        for i_level in reversed(range(levels)):
            for _ in range(self.num_res_blocks + 1):
                h = block(nf * self.ch_mult[i_level])(jnp.concatenate([h, hs.pop()], axis=-1), temb, train=train)
            if h.shape[1] in self.attn_resolutions:
                h = attn()(h)
            if self.progressive != "none":
                c = h.shape[-1]
                if self.progressive == "output_skip":
                    branch = _conv(channels, 3, self.conv, dtype, self.init_scale)(nn.silu(_norm(c, dtype)(h)))
                    pyramid = branch if pyramid is None else plain(pyramid, up=True) + branch
                elif pyramid is None:  # residual, first (coarsest) level
                    pyramid = _conv(c, 3, self.conv, dtype)(nn.silu(_norm(c, dtype)(h)))
                else:
                    pyramid = resample_conv(up=True, out_ch=c)(pyramid)
                    pyramid = (pyramid + h) / math.sqrt(2.0) if self.skip_rescale else pyramid + h
                    h = pyramid
            if i_level != 0:
                h = block(up=True)(h, temb, train=train)
        assert not hs

        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = nn.silu(_norm(h.shape[-1], dtype)(h))
            h = _conv(channels, 3, self.conv, dtype, self.init_scale)(h)
        return h.astype(jnp.float32)
