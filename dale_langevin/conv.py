"""Convolutions for XLA:CPU's backward pass: materialised cotangents and an im2col kernel gradient.

XLA:CPU computes a convolution's kernel gradient as a convolution over the batch axis, with
layout transposes of both operands in front of it. Two things make that slow, and this module
fixes both while keeping ``lax.conv_general_dilated``'s signature, values and parameter tree
(:func:`conv_general_dilated` is passed to ``flax.linen.Conv(conv_general_dilated=...)``, so
checkpoints are interchangeable):

* XLA fuses the elementwise backward pass that produces the output cotangent (GroupNorm and SiLU
  gradients, skip-connection splits: up to 20 operands) into those transposes, so it is recomputed
  once per consumer and read in transposed order. :func:`materialize` writes the cotangent to its
  own buffer first; the transposes become plain copies. ``lax.optimization_barrier`` cannot do this
  on CPU: XLA expands it before fusion.
* For 1x1 kernels the gradient is one matmul (``kernel_grad="im2col"``), cheaper than the
  transposed convolution.

Measured on 2 CPU cores with jax 0.10.2 (XLA:CPU runs convolutions through YNNPACK), demo U-Net,
batch 128: the transposes took 126 of 1199 ms per step; materialised, 58-67 ms, and the lean step
is 1.10x (demo) and 1.11x (MNIST) faster than with stock convolutions in one ``benchmarks.run``
(``benchmarks/README.md``). For 1x1 kernels the
matmul beats the stock kernel gradient (about 2 against 6-10 ms for 32x28x28x64 -> 32); for 3x3
kernels the nine shifted windows cost more to copy than the stock gradient (16-160 against
7-25 ms; im2col everywhere made the demo step 1.4-1.7x slower). Which convolutions take which path
is :func:`select`'s policy, read at trace time.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

MODES = ("auto", "on", "off")
KERNEL_GRADS = ("im2col", "stock")
_DN = ("NHWC", "HWIO", "NHWC")
Pads = tuple[tuple[int, int], ...]


def select(mode: str, kernel_size: Sequence[int]) -> Callable | None:
    """The ``conv_general_dilated`` for a ``flax.linen.Conv`` of ``kernel_size`` under ``mode``; ``None`` = stock.

    ``"auto"``: on JAX's CPU backend (read when called, i.e. at trace time), every convolution
    materialises its output cotangent, 1x1 kernels take the im2col kernel gradient and larger ones
    the stock one; on other backends the stock op. ``"on"``: the im2col kernel gradient for every
    kernel, on any backend. ``"off"``: the stock op.
    """
    if mode not in MODES:
        raise ValueError(f"cpu_conv must be one of {MODES}, got {mode!r}")
    if mode == "on":
        return conv_general_dilated
    if mode == "off" or jax.default_backend() != "cpu":
        return None
    return conv_general_dilated if all(k == 1 for k in kernel_size) else conv_stock_kernel_grad


@jax.custom_jvp
def materialize(x: jax.Array) -> jax.Array:
    """``x`` unchanged (any shape, non-empty), computed into a buffer of its own: XLA fuses nothing across it.

    A conditional whose predicate XLA cannot fold (``x[0] == x[0]``); both branches return ``x``
    (the second as ``-(-x)``, so a NaN first entry gives the same values). Differentiable: the
    tangent passes through unchanged.
    """
    flat = x.reshape(-1)
    return lax.cond(flat[0] == flat[0], lambda v: v, lambda v: -(-v), x)


materialize.defjvp(lambda primals, tangents: (materialize(primals[0]), tangents[0]))


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


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads, kernel_grad_mode: str) -> jax.Array:
    """2-D convolution, NHWC input ``(B, H, W, C_in)``, HWIO kernel ``(kh, kw, C_in, C_out)``, explicit pads.

    Same values as ``lax.conv_general_dilated``. The backward pass applies :func:`materialize` to the
    output cotangent, then takes the stock input gradient and the kernel gradient named by ``kernel_grad_mode``:
    ``"im2col"`` (:func:`kernel_grad`) or ``"stock"`` (XLA's).
    """
    return _stock(x, w, strides, pads)


def _conv2d_fwd(x, w, strides, pads, kernel_grad_mode):
    return _stock(x, w, strides, pads), (x, w)


def _conv2d_bwd(strides, pads, kernel_grad_mode, res, g):
    x, w = res
    g = materialize(g)
    (dx,) = jax.linear_transpose(lambda x_: _stock(x_, w, strides, pads), x)(g)
    if kernel_grad_mode == "im2col":
        return dx, kernel_grad(x, g, w.shape, strides, pads)
    (dw,) = jax.linear_transpose(lambda w_: _stock(x, w_, strides, pads), w)(g)
    return dx, dw


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1, precision=None, *,
                         kernel_grad: str = "im2col", **kwargs) -> jax.Array:
    """``lax.conv_general_dilated`` with :func:`conv2d`'s backward pass where it applies; same arguments, same output.

    Applies to 2-D NHWC/HWIO convolutions without dilation, feature groups or an explicit precision;
    other calls go to the stock op. ``kernel_grad``: ``"im2col"`` or ``"stock"`` (see :func:`conv2d`).
    """
    if kernel_grad not in KERNEL_GRADS:
        raise ValueError(f"kernel_grad must be one of {KERNEL_GRADS}, got {kernel_grad!r}")
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
    return conv2d(lhs, rhs, strides, tuple((int(lo), int(hi)) for lo, hi in pads), kernel_grad)


conv_stock_kernel_grad = partial(conv_general_dilated, kernel_grad="stock")
conv_stock_kernel_grad.__doc__ = """:func:`conv_general_dilated` with XLA's kernel gradient (the cotangent still materialised)."""
