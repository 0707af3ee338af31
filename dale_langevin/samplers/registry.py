"""The sampler registry: every reverse sampler, by name, behind one signature.

Every sampler is ``fn(rng, score_fn, x_T, process, **settings) -> x_0`` with ``x_T`` and ``x_0`` of
shape ``(B, ...)`` and ``score_fn(x (B, ...), t (B,)) -> (B, ...)``. It is registered once with

* its name (``config.sampling.method``),
* the process names it supports (``process.name``: ``"gbm"``, ``"ve"``, ``"vp"``),
* its settings: the keyword-only parameters of ``fn`` with their defaults, which become the config
  group ``config.sampling.<name>`` (call-time options such as ``return_trajectory`` stay out),
* ``nfe(**settings)``, its network evaluations per sample, and
* ``check(process, **settings)``, which raises ``ValueError`` naming a bad setting (``fn`` runs it too).

The pipeline, config validation, the ablations and the benchmarks look samplers up here and nowhere
else, so a new sampler is one function and one :func:`register` call::

    @registry.register("my_sampler", processes=("gbm",), nfe=lambda n_steps: n_steps)
    def my_sampler(rng, score_fn, x_T, process, *, n_steps: int = 10):
        ...
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import jax

from dale_langevin.processes.base import DiffusionProcess, ScoreFn

SamplerFn = Callable[..., jax.Array]  # (rng, score_fn, x_T, process, **settings) -> x_0 (B, ...)
CALL_OPTIONS = ("return_trajectory",)  # keyword arguments of a call, never settings in a config


@dataclasses.dataclass(frozen=True)
class Sampler:
    """One registered sampler.

    Attributes:
      name: the registry key and ``config.sampling.method`` value.
      fn: ``fn(rng, score_fn, x_T, process, **settings) -> x_0``.
      processes: the ``process.name`` values it supports.
      defaults: setting name -> default, from ``fn``'s keyword-only parameters.
      types: setting name -> its type where the default is ``None`` (for config placeholders).
      nfe: ``nfe(**settings) -> int``, network evaluations per sample.
      check: ``check(process, **settings)``, raises ``ValueError`` on a bad setting; ``None``: no checks.
      label: ``label(**settings) -> str`` for logs and tables; ``None``: the name.
    """

    name: str
    fn: SamplerFn
    processes: tuple[str, ...]
    defaults: Mapping[str, Any]
    types: Mapping[str, type]
    nfe: Callable[..., int]
    check: Callable[..., None] | None = None
    label: Callable[..., str] | None = None

    def settings(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The defaults updated by ``overrides``; ``ValueError`` naming any setting this sampler does not have."""
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"sampler {self.name!r} has no setting(s) {unknown}; its settings are {sorted(self.defaults)}"
            )
        return {**self.defaults, **overrides}

    def validate(self, process: DiffusionProcess, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Checks that ``process`` is supported and the settings are sound; returns the full settings."""
        if process.name not in self.processes:
            raise ValueError(
                f"sampler {self.name!r} supports processes {self.processes}, not {process.name!r}; "
                f"samplers for {process.name!r}: {names(process.name)}"
            )
        full = self.settings(settings)
        if self.check is not None:
            self.check(process, **full)
        return full

    def describe(self, settings: Mapping[str, Any] | None = None) -> str:
        """A short label, e.g. ``"ode (dpm2)"``, for logs and tables."""
        return self.label(**self.settings(settings)) if self.label is not None else self.name


_REGISTRY: dict[str, Sampler] = {}


def _settings_of(fn: SamplerFn) -> tuple[dict[str, Any], dict[str, type]]:
    """The keyword-only parameters of ``fn`` with defaults (less :data:`CALL_OPTIONS`) and the types of ``None`` ones."""
    bound = fn.keywords if isinstance(fn, functools.partial) else {}
    target = fn.func if isinstance(fn, functools.partial) else fn
    hints = typing.get_type_hints(target)
    defaults, kinds = {}, {}
    for p in inspect.signature(target).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.name in CALL_OPTIONS or p.name in bound:
            continue
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"setting {p.name!r} of {target.__name__} needs a default (it becomes a config field)")
        defaults[p.name] = p.default
        if p.default is None:
            hint = hints.get(p.name)
            args = [a for a in typing.get_args(hint) if a is not type(None)] if hint is not None else []
            if not (isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union) or len(args) != 1:
                raise TypeError(f"setting {p.name!r} of {target.__name__} defaults to None: annotate it as `T | None`")
            kinds[p.name] = args[0]
    return defaults, kinds


def register(
    name: str,
    fn: SamplerFn | None = None,
    *,
    processes: tuple[str, ...],
    nfe: Callable[..., int],
    check: Callable[..., None] | None = None,
    label: Callable[..., str] | None = None,
    replace: bool = False,
):
    """Registers ``fn`` as sampler ``name``; usable as a decorator (``fn`` omitted). Returns ``fn``.

    Settings are ``fn``'s keyword-only parameters with defaults (a ``functools.partial``'s bound
    keywords excluded). ``ValueError`` if ``name`` is taken (unless ``replace``) or malformed.
    """
    if fn is None:
        return functools.partial(
            register, name, processes=processes, nfe=nfe, check=check, label=label, replace=replace
        )
    if not (isinstance(name, str) and name.isidentifier()):
        raise ValueError(f"sampler name must be an identifier (it is a config group), got {name!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"sampler {name!r} is already registered (pass replace=True to redefine it)")
    if not processes:
        raise ValueError(f"sampler {name!r} must support at least one process")
    defaults, kinds = _settings_of(fn)
    _REGISTRY[name] = Sampler(
        name, fn, tuple(processes), types.MappingProxyType(defaults), types.MappingProxyType(kinds), nfe, check, label
    )
    return fn


def unregister(name: str) -> None:
    """Removes sampler ``name`` (no error if absent): for notebooks and tests that register their own."""
    _REGISTRY.pop(name, None)


def get(name: str) -> Sampler:
    """The sampler registered as ``name``; ``ValueError`` listing the registered names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown sampler {name!r}; registered: {tuple(_REGISTRY)}") from None


def names(process_name: str | None = None) -> tuple[str, ...]:
    """Registered sampler names, in registration order; only those supporting ``process_name`` if given."""
    return tuple(n for n, s in _REGISTRY.items() if process_name is None or process_name in s.processes)


def sample(
    rng: jax.Array,
    score_fn: ScoreFn,
    x_T: jax.Array,
    process: DiffusionProcess,
    *,
    method: str = "dale_langevin",
    **settings,
):
    """Runs sampler ``method`` from ``x_T`` ``(B, ...)`` at ``T``; returns ``x_0`` ``(B, ...)``.

    ``settings`` are the sampler's own (``get(method).defaults`` lists them) plus call options such
    as ``return_trajectory`` where the sampler has them. Pure: jit it with ``method`` static.
    """
    spec = get(method)
    options = {k: settings.pop(k) for k in CALL_OPTIONS if k in settings}
    full = spec.validate(process, settings)
    return spec.fn(rng, score_fn, x_T, process, **full, **options)


def levels(method: str, n_steps: int) -> dict[str, int]:
    """``{"n_steps": n_steps}`` if sampler ``method`` has that setting, else ``{}``: how the pipeline asks any sampler
    for a number of levels (periodic grids, ablation rows and curves)."""
    return {"n_steps": n_steps} if "n_steps" in get(method).defaults else {}


def network_evaluations(method: str, settings: Mapping[str, Any] | None = None) -> int:
    """Network evaluations per sample of ``method`` under ``settings`` (defaults for the rest)."""
    spec = get(method)
    return int(spec.nfe(**spec.settings(settings)))
