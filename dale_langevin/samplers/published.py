"""The published Dale-Langevin and sign-agnostic sampler settings, as config overrides of a sampler group.

The paper's samplers run ``N = 1000`` levels with a tuned step size ``delta``, ``L`` updates per
level and a per-level noise annealing factor. :func:`settings` returns them for
``config.sampling.<method>``, rescaled to ``n_steps`` levels so that the total annealing
(``decay**N``) and the ratio of the step to the level spacing (``delta / (T / N)``) are kept.
"""

from __future__ import annotations

from dale_langevin.checks import check_choice, check_int

# dataset -> method -> (delta, L, anneal) at N = 1000 levels (paper notes). Only Fashion-MNIST's
# are in the notes; the MNIST and KMNIST configs reuse them.
PUBLISHED: dict[str, dict[str, tuple[float, int, float]]] = {
    "fashion_mnist": {"dale_langevin": (5.86e-4, 1, 0.995), "sign_agnostic": (1.468e-3, 3, 0.9995)},
}
PUBLISHED_LEVELS = 1000


def settings(dataset: str, method: str, n_steps: int = PUBLISHED_LEVELS, T: float = 1.0) -> dict:
    """``{"step_size", "n_inner", "noise_decay"}`` of the published ``method`` for ``dataset`` at ``n_steps`` levels."""
    check_choice(dataset, tuple(PUBLISHED), "published settings dataset")
    check_choice(method, tuple(PUBLISHED[dataset]), f"published sampler for {dataset}")
    check_int(n_steps, "n_steps", 1)
    delta, n_inner, decay = PUBLISHED[dataset][method]
    scale = PUBLISHED_LEVELS / n_steps
    return {"step_size": delta * scale * T, "n_inner": n_inner, "noise_decay": float(decay**scale)}
