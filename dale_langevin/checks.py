"""Argument checks shared by the math objects and the samplers, each raising ``ValueError`` that names the argument.

The math checks its own inputs (a ``GBM`` refuses ``sigma=-1``, a sampler refuses ``n_inner=0``);
:mod:`dale_langevin.pipeline.config` only prefixes those messages with the config path they came from.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def check_choice(value: Any, choices: tuple, name: str) -> None:
    """Raises ``ValueError`` naming ``name`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_int(value: Any, name: str, low: int = 0) -> None:
    """Raises ``ValueError`` unless ``value`` is an integer (Python or numpy, not a bool) ``>= low``.

    Settings are static Python values: a traced value (a setting passed through ``jit``) fails here too.
    """
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        hint = (
            " (settings are static: bind them with functools.partial, not as traced arguments)"
            if hasattr(value, "aval")
            else ""
        )
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}{hint}")


def is_number(value: Any) -> bool:
    """True for a finite real number (Python or numpy scalar) that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_positive(value: Any, name: str) -> None:
    """Raises ``ValueError`` unless ``value`` is a finite number ``> 0``."""
    if not (is_number(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_range(
    value: Any, name: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False, why: str = ""
) -> None:
    """Raises ``ValueError`` unless ``value`` is a finite number in the interval from ``low`` to ``high``.

    ``low_open``/``high_open`` exclude the end points; ``why`` is appended to the message.
    """
    ok = (
        is_number(value)
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high)
    )
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}{' ' + why if why else ''}, got {value!r}")
