"""A drop-in for ``lax.conv_general_dilated`` whose kernel gradient is an im2col matmul (for XLA:CPU).

XLA:CPU computes a convolution's kernel gradient as a convolution over the batch axis, with
transposes of both operands around it; an einsum of shifted input windows against the output
cotangent is a plain matmul instead. :func:`conv_general_dilated` has the signature of
``lax.conv_general_dilated`` and is passed to ``flax.linen.Conv(conv_general_dilated=...)``, so the
parameter tree is the stock one and checkpoints are interchangeable. It handles 2-D NHWC/HWIO
convolutions without dilation or groups and defers everything else to the stock op.

Which convolutions use it is :func:`select`'s policy, read at trace time. Measured on 2 CPU cores
with jax 0.10.2 (whose XLA:CPU runs convolutions through YNNPACK): for 1x1 kernels the matmul
beats the stock kernel gradient (about 2 against 6-10 ms for 32x28x28x64 -> 32); for 3x3
kernels the nine shifted windows cost more to copy than the stock gradient (16-160 against
7-25 ms), and im2col on every convolution made the demo train step 1.4-1.7x slower. So
``"auto"`` uses it for 1x1 kernels on the CPU backend only (within a few per cent of the stock
step on the demo and MNIST U-Nets: 1.02x and 1.04x), ``"on"`` for every kernel.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

MODES = ("auto", "on", "off")
_DN = ("NHWC", "HWIO", "NHWC")
Pads = tuple[tuple[int, int], ...]


def select(mode: str, kernel_size: Sequence[int]) -> Callable | None:
    """The ``conv_general_dilated`` for a ``flax.linen.Conv`` of ``kernel_size`` under ``mode``; ``None`` = stock.

    ``"on"``: :func:`conv_general_dilated` for every kernel. ``"auto"``: for 1x1 kernels, and only
    when JAX's default backend is the CPU (read when called, i.e. at trace time). ``"off"``: never.
    """
    if mode not in MODES:
        raise ValueError(f"cpu_conv must be one of {MODES}, got {mode!r}")
    pointwise = all(k == 1 for k in kernel_size)
    use = mode == "on" or (mode == "auto" and pointwise and jax.default_backend() == "cpu")
    return conv_general_dilated if use else None


def _stock(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads) -> jax.Array:
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_DN)


def kernel_grad(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...], strides: tuple[int, int],
                pads: Pads) -> jax.Array:
    """The gradient of ``sum(g * conv(x, w))`` w.r.t. ``w``: ``(kh, kw, C_in, C_out)``.

    ``x`` ``(B, H, W, C_in)``, ``g`` ``(B, H_out, W_out, C_out)``. Entry ``[i, j]`` is the matmul of the
    input window shifted by ``(i, j)`` (``(B*H_out*W_out, C_in)``) with ``g`` over the batch and pixels.
    """
    kh, kw = kernel_shape[:2]
    if (kh, kw) == (1, 1) and pads == ((0, 0), (0, 0)) and strides == (1, 1):
        return jnp.einsum("bhwc,bhwo->co", x, g)[None, None].astype(x.dtype)  # one matmul, no window copies
    (sh, sw), (ho, wo) = strides, g.shape[1:3]
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    window = lambda i, j: xp[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :]  # noqa: E731
    rows = [jnp.stack([jnp.einsum("bhwc,bhwo->co", window(i, j), g) for j in range(kw)]) for i in range(kh)]
    return jnp.stack(rows).astype(x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads) -> jax.Array:
    """2-D convolution, NHWC input ``(B, H, W, C_in)``, HWIO kernel ``(kh, kw, C_in, C_out)``, explicit pads.

    Same values as ``lax.conv_general_dilated``; the kernel gradient comes from :func:`kernel_grad`,
    the input gradient is the stock transposed convolution.
    """
    return _stock(x, w, strides, pads)


def _conv2d_fwd(x, w, strides, pads):
    return _stock(x, w, strides, pads), (x, w)


def _conv2d_bwd(strides, pads, res, g):
    x, w = res
    (dx,) = jax.linear_transpose(lambda x_: _stock(x_, w, strides, pads), x)(g)
    return dx, kernel_grad(x, g, w.shape, strides, pads)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1, precision=None, **kwargs) -> jax.Array:
    """``lax.conv_general_dilated`` with the im2col kernel gradient where it applies; same arguments, same output.

    Applies to 2-D NHWC/HWIO convolutions without dilation, feature groups or an explicit precision;
    other calls go to the stock op.
    """
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    plain = (lhs.ndim == 4 and dn == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DN) and feature_group_count == 1
             and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
             and precision is None and not kwargs)
    if not plain:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count, precision=precision, **kwargs)
    strides = tuple(int(s) for s in window_strides)
    pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding) if isinstance(padding, str) else padding
    return conv2d(lhs, rhs, strides, tuple((int(lo), int(hi)) for lo, hi in pads))
