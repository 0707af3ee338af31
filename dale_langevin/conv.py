"""Convolutions for XLA:CPU's backward pass: materialised cotangents and matmul kernel gradients.

XLA:CPU computes a convolution's kernel gradient as a convolution over the batch axis, with
layout transposes of both operands in front of it. Two things make that slow, and this module
fixes both while keeping ``lax.conv_general_dilated``'s signature, values and parameter tree
(its functions are passed to ``flax.linen.Conv(conv_general_dilated=...)``, so checkpoints are
interchangeable):

* XLA fuses the elementwise backward pass that produces the output cotangent (GroupNorm and SiLU
  gradients, skip-connection splits: up to 20 operands) into those transposes, so it is recomputed
  once per consumer and read in transposed order. :func:`materialize_cotangent` makes the
  cotangent a buffer of its own first; the transposes become plain copies.
  ``lax.optimization_barrier`` cannot do this on CPU: XLA expands it before fusion.
* For 1x1 kernels the kernel gradient is one matmul over batch and pixels, cheaper than the
  transposed convolution.

:func:`conv_materialized` (``cpu_conv="auto"`` on a CPU) does both with ordinary JAX ops (a
custom JVP, no custom VJP), so forward mode works too (``jax.jvp``, the Hutchinson divergence of
``ode.log_likelihood``). :func:`conv_general_dilated` (``cpu_conv="on"``) also computes 3x3 kernel
gradients as im2col matmuls through a custom VJP: reverse mode only, and slower.

Measured on 2 CPU cores with jax 0.10.2 (XLA:CPU runs convolutions through YNNPACK), demo U-Net,
batch 128 (64 per device): the transposes took 126 of 1199 ms of one device's step; materialised,
58-67 ms, and the lean step is 1.06x (demo) and 1.13x (MNIST) faster than with stock convolutions
in one ``benchmarks.run`` (figures in ``benchmarks/README.md``). For 1x1 kernels the matmul beats the stock kernel gradient (about 2
against 6-10 ms for 32x28x28x64 -> 32); for 3x3 kernels the nine shifted windows cost more to
copy than the stock gradient (16-160 against 7-25 ms; im2col everywhere made the demo step
1.4-1.7x slower). Which convolutions take which path is :func:`select`'s policy, read at trace
time.
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


def select(mode: str) -> Callable | None:
    """The ``conv_general_dilated`` for a ``flax.linen.Conv`` under ``mode``; ``None`` = the stock op.

    ``"auto"``: :func:`conv_materialized` on JAX's CPU backend (read when called, i.e. at trace
    time), the stock op elsewhere. ``"on"``: :func:`conv_general_dilated` (im2col kernel gradients,
    reverse mode only) on any backend. ``"off"``: the stock op.
    """
    if mode not in MODES:
        raise ValueError(f"cpu_conv must be one of {MODES}, got {mode!r}")
    if mode == "on":
        return conv_general_dilated
    if mode == "off" or jax.default_backend() != "cpu":
        return None
    return conv_materialized


def _identity_cond(pred: jax.Array, x: jax.Array) -> jax.Array:
    # Both branches return x (the second as -(-x)); XLA keeps the conditional, and a conditional's
    # operand is a buffer of its own: nothing fuses across it.
    return lax.cond(pred, lambda v: v, lambda v: -(-v), x)


def _runtime_true(x: jax.Array) -> jax.Array:
    """A scalar predicate XLA cannot fold (``x[0] == x[0]``); False only for a NaN first entry."""
    flat = x.reshape(-1)
    return flat[0] == flat[0]


def materialize(x: jax.Array) -> jax.Array:
    """``x`` unchanged (any shape, non-empty), computed into a buffer of its own: XLA fuses nothing across it.

    A conditional on :func:`_runtime_true` whose branches both return ``x``, so a NaN first entry
    gives the same values. Differentiable (the tangent and cotangent are materialised too).
    """
    return _identity_cond(_runtime_true(x), x)


@jax.custom_jvp
def materialize_cotangent(y: jax.Array) -> jax.Array:
    """``y`` unchanged (any shape, non-empty); its tangent, and so its cotangent, goes through :func:`materialize`.

    The forward value is not copied (no conditional outside differentiation). Under ``jax.grad`` the
    tangent's conditional is transposed into one on the cotangent, which is what stops XLA:CPU from
    fusing the elementwise backward pass into a convolution's kernel-gradient transposes.
    """
    return y


@materialize_cotangent.defjvp
def _materialize_cotangent_jvp(primals, tangents):
    (y,), (t,) = primals, tangents
    return y, _identity_cond(_runtime_true(y), t)  # predicate from the primal: linear in t


def _plain_pads(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                feature_group_count, precision, kwargs) -> tuple[tuple[int, int], Pads] | None:
    """``(strides, pads)`` for a 2-D NHWC/HWIO convolution without dilation, groups or precision, else ``None``."""
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    plain = (lhs.ndim == 4 and dn == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DN) and feature_group_count == 1
             and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
             and precision is None and not kwargs)
    if not plain:
        return None
    strides = tuple(int(s) for s in window_strides)
    pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding) if isinstance(padding, str) else padding
    return strides, tuple((int(lo), int(hi)) for lo, hi in pads)


def conv_materialized(lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None, rhs_dilation=None,
                      dimension_numbers=None, feature_group_count: int = 1, precision=None, **kwargs) -> jax.Array:
    """``lax.conv_general_dilated`` (same arguments, same output) with its output cotangent materialised.

    1x1 NHWC/HWIO kernels without stride or padding run as a matmul (``(B, H, W, C_in) @ (C_in,
    C_out)``), so their kernel gradient is one matmul too. Every other call is the stock op. Both
    wrapped in :func:`materialize_cotangent`; forward and reverse mode work.
    """
    plain = _plain_pads(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                        feature_group_count, precision, kwargs)
    if plain is not None and rhs.shape[:2] == (1, 1) and plain == ((1, 1), ((0, 0), (0, 0))):
        return materialize_cotangent(lax.dot_general(lhs, rhs[0, 0], (((3,), (0,)), ((), ()))))
    return materialize_cotangent(lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count, precision=precision, **kwargs))


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

    Same values as ``lax.conv_general_dilated``. The backward pass materialises the output
    cotangent, takes the stock input gradient and the kernel gradient from :func:`kernel_grad`.
    A custom VJP: reverse mode only (``jax.jvp`` raises).
    """
    return _stock(x, w, strides, pads)


def _conv2d_fwd(x, w, strides, pads):
    return _stock(x, w, strides, pads), (x, w)


def _conv2d_bwd(strides, pads, res, g):
    x, w = res
    g = materialize(g)
    (dx,) = jax.linear_transpose(lambda x_: _stock(x_, w, strides, pads), x)(g)
    return dx, kernel_grad(x, g, w.shape, strides, pads)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1, precision=None, **kwargs) -> jax.Array:
    """``lax.conv_general_dilated`` with :func:`conv2d`'s im2col backward pass where it applies; same output.

    Applies to 2-D NHWC/HWIO convolutions without dilation, feature groups or an explicit precision;
    other calls go to the stock op.
    """
    plain = _plain_pads(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                        feature_group_count, precision, kwargs)
    if plain is None:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count, precision=precision, **kwargs)
    return conv2d(lhs, rhs, *plain)
