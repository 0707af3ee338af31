"""The CPU ablation: what the multiplicative structure buys once noise level, prior and budget are equal.

    python -m dale_langevin.main --mode=ablate --config=configs/ablation_cpu.py --workdir=/tmp/ablation

Seven trainings of the demo U-Net for the same number of steps (GBM with the three M-DSM weightings
and the authors' score parametrisation; VE at sigma_max 50, VE at GBM's terminal signal-to-noise
ratio; VP), sixteen sampled rows, each drawn with three sampling seeds and reported as mean and
spread, and FID against network evaluations for the rows of the process comparison. The written
table and its reading are docs/ablation_cpu.md; for accelerators, configs/ablation_mnist.py runs the
same grid at full size.

The rows that separate the causes:

* ``ve_snr_*``: VE with ``sigma_max`` set so that its terminal SNR equals GBM's (the rule of
  :mod:`dale_langevin.processes.snr`: SNR = Var[data] / noise variance at T, both in the domain where
  the kernel is Gaussian, variance pooled over the embedded training digits), sampled from the same
  per-pixel prior fit GBM gets, and from an isotropic one.
* ``log_ve_euler_maruyama``: GBM written additively (:class:`~dale_langevin.processes.LogVESDE`),
  sampled by Euler-Maruyama in log space. Its DSM loss with its published weighting is GBM's
  ``noise``-weighted M-DSM up to float rounding (``tests/test_additive.py``), so it samples the
  ``gbm_noise`` network; it should agree with ``weighting_noise`` (Dale-Langevin on that network).
  ``config.ablation`` validation refuses a ``process.log_ve`` that is not ``process.gbm`` written
  additively.
* ``vp_*``: VP from the per-pixel prior fit and from an isotropic one.

The grid is data: ``ablation.trainings`` (what each model changes in this config) and
``ablation.grid`` (what each row changes in its training's config; see
``dale_langevin.evaluation.ablations.Row`` for the fields).
"""

import os

from ml_collections import ConfigDict

from dale_langevin.pipeline.config import load_config_file

# Every SDE sampler of the grid: the shared levels and the demo's 10 noise-free final updates ("extras on").
SDE_SAMPLERS = ("dale_langevin", "sign_agnostic", "euler_maruyama")
EXTRAS_OFF = (("denoise_steps", 0), ("noise_decay", 1.0), ("step_size", None), ("n_inner", 1))
# The rows of the process comparison, each with an NFE curve.
PROCESS_ROWS = (
    "gbm_dale_langevin",
    "gbm_sign_agnostic",
    "gbm_ode",
    "log_ve_euler_maruyama",
    "ve_euler_maruyama",
    "ve_snr_euler_maruyama",
    "vp_euler_maruyama",
)


def _extras_off(method):
    return tuple((f"sampling.{method}.{k}", v) for k, v in EXTRAS_OFF)


# VE's sigma_max at GBM's terminal SNR: processes.snr.matched_ve_sigma_max(embedded training digits, GBM()) is
# 2.2500 for the published sigma 0.8, T 1 (tests/test_ablations.py recomputes it). A literal, not computed here:
# a config file must not run JAX ops, which would start the backends before main forces the host devices.
VE_SNR_SIGMA_MAX = 2.25


def trainings(ve_sigma_max: float):
    """name, description, overrides of the base config: the process, the weighting or the parametrisation;
    ``ve_sigma_max`` is the matched-SNR VE's."""
    em = ("sampling.method", "euler_maruyama")
    return (
        dict(name="gbm", description="GBM, M-DSM, published weighting v_t^2", overrides=()),
        dict(
            name="gbm_noise",
            description="GBM, M-DSM, noise weighting v_t (= log-space VE's DSM)",
            overrides=(("training.weighting", "noise"),),
        ),
        dict(
            name="gbm_likelihood",
            description="GBM, M-DSM, likelihood weighting sigma^2",
            overrides=(("training.weighting", "likelihood"),),
        ),
        dict(
            name="gbm_score",
            description="GBM, M-DSM, v_t^2, the authors' score parametrisation (network -> grad log p)",
            overrides=(("model.parametrisation", "score"),),
        ),
        dict(
            name="ve",
            description="VE sigma_max 50, DSM, weighting s_t^2 (noise variance)",
            overrides=(("process.name", "ve"), em),
        ),
        dict(
            name="ve_snr",
            description=f"VE sigma_max {ve_sigma_max} (GBM's terminal SNR), DSM, weighting s_t^2",
            overrides=(("process.name", "ve"), ("process.ve.sigma_max", ve_sigma_max), em),
        ),
        dict(
            name="vp",
            description="VP beta_max 20, DSM, weighting s_t^2 (noise variance)",
            overrides=(("process.name", "vp"), em),
        ),
    )


def grid():
    """The rows of the table, in order."""
    em, scalar = "euler_maruyama", (("sampling.start", "scalar"),)
    return (
        dict(name="gbm_dale_langevin", training="gbm", group="process", method="dale_langevin"),
        dict(name="gbm_sign_agnostic", training="gbm", group="process", method="sign_agnostic"),
        dict(name="gbm_ode", training="gbm", group="process", method="ode", levels=0.5),  # dpm2: 2 evaluations a level
        dict(
            name="log_ve_euler_maruyama",
            training="gbm_noise",
            group="process",
            method=em,
            overrides=(("process.name", "log_ve"),),
        ),
        dict(name="ve_euler_maruyama", training="ve", group="process", method=em),
        dict(name="ve_snr_euler_maruyama", training="ve_snr", group="process", method=em),
        dict(name="vp_euler_maruyama", training="vp", group="process", method=em),
        dict(name="ve_snr_scalar_prior", training="ve_snr", group="prior", method=em, overrides=scalar),
        dict(name="vp_scalar_prior", training="vp", group="prior", method=em, overrides=scalar),
        dict(name="prior_scalar", training="gbm", group="prior", method="dale_langevin", overrides=scalar),
        dict(name="weighting_noise", training="gbm_noise", group="weighting", method="dale_langevin"),
        dict(name="weighting_likelihood", training="gbm_likelihood", group="weighting", method="dale_langevin"),
        dict(name="parametrisation_score", training="gbm_score", group="parametrisation", method="dale_langevin"),
        dict(
            name="extras_off_dale_langevin",
            training="gbm",
            group="extras",
            method="dale_langevin",
            overrides=_extras_off("dale_langevin"),
        ),
        dict(
            name="extras_off_sign_agnostic",
            training="gbm",
            group="extras",
            method="sign_agnostic",
            overrides=_extras_off("sign_agnostic"),
        ),
        dict(
            name="extras_published_dale_langevin",
            training="gbm",
            group="extras",
            method="dale_langevin",
            published="fashion_mnist",
        ),
    )


def get_config():
    """The demo's data, network and optimizer; an equal budget per training, 100-level samplers, 3 seeds."""
    c = load_config_file(os.path.join(os.path.dirname(__file__), "demo.py"))  # configs/ is loaded by path
    # The demo's budget, 1,200 steps of batch 64: the least at which VP drew digits on this machine (offline FID
    # of 200 samples at 110 NFE: 303 after 400 steps, 111 after 800, 35 after 1,200; docs/ablation_cpu.md).
    c.training.n_iters = 1_200
    c.training.ckpt_every = 200
    c.training.keep_checkpoints = 1
    for method in SDE_SAMPLERS:
        c.sampling[method].denoise_steps = 10
    c.sampling.batch_size = 100

    c.ablation = ConfigDict()
    c.ablation.n_steps = 100  # sampler levels of every row (times the row's `levels`), besides the curves
    c.ablation.rows = "all"  # comma-separated names from ablation.grid, or all
    c.ablation.curves = ",".join(PROCESS_ROWS)
    c.ablation.nfe_steps = (10, 30)  # extra sampler levels for the curves (besides ablation.n_steps)
    c.ablation.n_samples = 200
    c.ablation.seeds = (0, 1, 2)  # sampling seeds: every row and curve point is drawn once per seed
    c.ablation.trainings = trainings(VE_SNR_SIGMA_MAX)
    c.ablation.grid = grid()
    return c
