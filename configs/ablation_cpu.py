"""The CPU ablation: GBM against VE/VP, weightings, prior, sampler extras, on the embedded MNIST digits.

    python -m dale_langevin.main --mode=ablate --config=configs/ablation_cpu.py --workdir=/tmp/ablation

Five trainings (GBM with the three M-DSM weightings, VE, VP) of the demo U-Net for the same number of
steps, eleven sampled rows, and FID/KID against network evaluations for five samplers. Sized for 2
CPU cores (63 CPU-minutes measured, about 32 minutes on 2 idle cores); the table it wrote is
docs/ablation_cpu.md. For accelerators, see configs/ablation_mnist.py.

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


def _extras_off(method):
    return tuple((f"sampling.{method}.{k}", v) for k, v in EXTRAS_OFF)


def trainings():
    """name, description, overrides of the base config: the process or the weighting, nothing else."""
    return (
        dict(name="gbm", description="GBM, M-DSM, published weighting v_t^2", overrides=()),
        dict(
            name="gbm_noise",
            description="GBM, M-DSM, noise weighting v_t",
            overrides=(("training.weighting", "noise"),),
        ),
        dict(
            name="gbm_likelihood",
            description="GBM, M-DSM, likelihood weighting sigma^2",
            overrides=(("training.weighting", "likelihood"),),
        ),
        dict(
            name="ve",
            description="VE, DSM, weighting s_t^2 (noise variance)",
            overrides=(("process.name", "ve"), ("sampling.method", "euler_maruyama")),
        ),
        dict(
            name="vp",
            description="VP, DSM, weighting s_t^2 (noise variance)",
            overrides=(("process.name", "vp"), ("sampling.method", "euler_maruyama")),
        ),
    )


def grid():
    """The rows of the table, in order."""
    return (
        dict(name="gbm_dale_langevin", training="gbm", group="process", method="dale_langevin"),
        dict(name="gbm_sign_agnostic", training="gbm", group="process", method="sign_agnostic"),
        dict(name="ve_euler_maruyama", training="ve", group="process", method="euler_maruyama"),
        dict(name="vp_euler_maruyama", training="vp", group="process", method="euler_maruyama"),
        dict(name="gbm_ode", training="gbm", group="process", method="ode", levels=0.5),  # dpm2: 2 evaluations a level
        dict(name="weighting_noise", training="gbm_noise", group="weighting", method="dale_langevin"),
        dict(name="weighting_likelihood", training="gbm_likelihood", group="weighting", method="dale_langevin"),
        dict(
            name="prior_scalar",
            training="gbm",
            group="prior",
            method="dale_langevin",
            overrides=(("sampling.start", "scalar"),),
        ),
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
    """The demo's data, network and optimizer; a short equal budget per training, 100-level samplers."""
    c = load_config_file(os.path.join(os.path.dirname(__file__), "demo.py"))  # configs/ is loaded by path
    c.training.n_iters = 250
    c.training.ckpt_every = 250
    c.training.keep_checkpoints = 1
    c.optim.warmup_steps = 50
    c.ema.decay = 0.99
    for method in SDE_SAMPLERS:
        c.sampling[method].denoise_steps = 10
    c.sampling.batch_size = 100

    c.ablation = ConfigDict()
    c.ablation.n_steps = 100  # sampler levels of every row (times the row's `levels`), besides the curves
    c.ablation.rows = "all"  # comma-separated names from ablation.grid, or all
    c.ablation.curves = "gbm_dale_langevin,gbm_sign_agnostic,ve_euler_maruyama,vp_euler_maruyama,gbm_ode"
    c.ablation.nfe_steps = (10, 30)  # extra sampler levels for the curves (besides ablation.n_steps)
    c.ablation.n_samples = 200
    c.ablation.trainings = trainings()
    c.ablation.grid = grid()
    return c
