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

:func:`conv_materialized` does both with ordinary JAX ops (a custom JVP, no custom VJP), so
forward mode works too (``jax.jvp``, the Hutchinson divergence of ``ode.log_likelihood``).
:func:`for_backend` is the policy the model builder applies: this on XLA:CPU, the stock op elsewhere.

Measured on 2 CPU cores with jax 0.10.2 (XLA:CPU runs convolutions through YNNPACK), demo U-Net,
batch 128 (64 per device): the transposes took 126 of 1199 ms of one device's step; materialised,
58-67 ms, and the lean step is 1.06x (demo) and 1.13x (MNIST) faster than with stock convolutions
in one ``benchmarks.run`` (figures in ``benchmarks/README.md``). For 1x1 kernels the matmul beats the stock kernel gradient (about 2
against 6-10 ms for 32x28x28x64 -> 32); for 3x3 kernels the nine shifted windows cost more to
copy than the stock gradient (16-160 against 7-25 ms; im2col everywhere made the demo step
1.4-1.7x slower; that im2col path was measured and removed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")
# Keyword arguments of lax.conv_general_dilated that the pointwise path understands.
_OPTIONS = frozenset({"lhs_dilation", "rhs_dilation", "dimension_numbers", "feature_group_count", "precision"})


def for_backend(backend: str) -> Callable | None:
    """The convolution for a network on ``backend`` (``jax.default_backend()``): :func:`conv_materialized` on
    ``"cpu"``, ``None`` (the stock op) on GPU and TPU, whose compilers need no help here."""
    return conv_materialized if backend == "cpu" else None


def _identity_cond(pred: jax.Array, x: jax.Array) -> jax.Array:
    # Both branches return x (the second as -(-x)); XLA keeps the conditional, and a conditional's
    # operand is a buffer of its own: nothing fuses across it.
    return lax.cond(pred, lambda v: v, lambda v: lax.neg(lax.neg(v)), x)


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


def _pointwise(lhs, rhs, window_strides, padding, options: dict) -> bool:
    """True for a 1x1 NHWC/HWIO kernel with unit strides and no padding, dilation, groups or precision."""
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, options.get("dimension_numbers"))
    if lhs.ndim != 4 or rhs.shape[:2] != (1, 1) or dn != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DN):
        return False
    pads = lax.padtype_to_pads(lhs.shape[1:3], (1, 1), window_strides, padding) if isinstance(padding, str) else padding
    dilations = (*(options.get("lhs_dilation") or ()), *(options.get("rhs_dilation") or ()))
    return (
        tuple(int(s) for s in window_strides) == (1, 1)
        and all(tuple(int(p) for p in pad) == (0, 0) for pad in pads)
        and options.get("feature_group_count", 1) == 1
        and all(d in (None, 1) for d in dilations)
        and options.get("precision") is None
        and set(options) <= _OPTIONS
    )


def conv_materialized(lhs, rhs, window_strides: Sequence[int], padding, **options) -> jax.Array:
    """``lax.conv_general_dilated`` (same arguments, same output) with its output cotangent materialised.

    1x1 NHWC/HWIO kernels without stride or padding run as a matmul (``(B, H, W, C_in) @ (C_in,
    C_out)``), so their kernel gradient is one matmul too. Every other call is the stock op. Both
    wrapped in :func:`materialize_cotangent`; forward and reverse mode work.
    """
    if _pointwise(lhs, rhs, window_strides, padding, options):
        return materialize_cotangent(lax.dot_general(lhs, rhs[0, 0], (((3,), (0,)), ((), ()))))
    return materialize_cotangent(lax.conv_general_dilated(lhs, rhs, window_strides, padding, **options))
