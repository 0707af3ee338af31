"""The paper's settings as configs: one builder behind every ``configs/paper/<dataset>_<sampler>.py`` preset.

Each preset is ``config(dataset, sampler, class_average=..., size=...)``: the authors' network, score
parametrisation, training, prior and sampler settings for one row of the paper's evaluation
(read from their code; ``docs/reproduction.md`` lists them with their sources and where we differ).

* 28x28 sets (MNIST, Fashion-MNIST, KMNIST): NCSNv2-deeper (ngf 128, conditional InstanceNorm++
  over the 1,000 level indices), Adam lr 1e-4, no warm-up, no clipping, 300,001 iterations.
* CIFAR-10: NCSN++ deep (nf 128, 8 residual blocks per level, attention at 16x16, Fourier features
  of the noise level, FIR resampling, a residual input pyramid), lr 2e-4 with a
  5,000-step warm-up, clipping at norm 1, 1.3M iterations.
* Both: batch 128, EMA 0.999 (sampled), the network outputs the ordinary score (``parametrisation =
  "score"``, ``h = x s``), N = 1000 training levels with the published ``v_t**2`` weighting, the
  published log-normal prior constants as the start (``class_average``: class means pushed forward
  by the authors' rule), and the published step size, ``L`` and annealing at 1000 levels.

``size="cpu"`` keeps the sampler settings, parametrisation and prior and shrinks the rest to what
two CPU cores train in about half an hour: the embedded MNIST digits, a narrower network, a short
schedule with warm-up (``docs/reproduction.md`` has what it measured).
"""

from __future__ import annotations

from dale_langevin.pipeline.config import default_config
from dale_langevin.samplers import published

DATASETS = ("mnist", "fashion_mnist", "kmnist", "cifar10")
SAMPLERS = ("dale_langevin", "sign_agnostic")
SIZES = ("full", "cpu")

# The authors' training, per image size.
TRAINING = {
    "28x28": dict(lr=1e-4, warmup_steps=0, grad_clip=0.0, n_iters=300_001),
    "cifar10": dict(lr=2e-4, warmup_steps=5_000, grad_clip=1.0, n_iters=1_300_000),
}
EVAL_SAMPLES = 50_000  # the paper's protocol: FID/KID of 50,000 samples against the test split
CPU_EVAL_SAMPLES = 256


def _check(dataset: str, sampler: str, class_average: bool, size: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"paper preset dataset must be one of {DATASETS}, got {dataset!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"paper preset sampler must be one of {SAMPLERS}, got {sampler!r}")
    if size not in SIZES:
        raise ValueError(f"paper preset size must be one of {SIZES}, got {size!r}")
    if class_average and sampler not in published.CLASS_AVERAGE.get(dataset, {}):
        have = [f"{d}/{s}" for d, row in published.CLASS_AVERAGE.items() for s in row]
        raise ValueError(f"the paper has no class-average run for {dataset}/{sampler}; it has {have}")


def config(dataset: str, sampler: str, *, class_average: bool = False, size: str = "full"):
    """The preset for ``dataset`` (:data:`DATASETS`) sampled with ``sampler`` (:data:`SAMPLERS`).

    ``class_average``: the paper's runs that start from class averages (KMNIST sign-agnostic,
    CIFAR-10). ``size``: ``full`` (the authors' settings) or ``cpu`` (see the module docstring).
    Returns a :func:`~dale_langevin.pipeline.config.default_config` ConfigDict.
    """
    _check(dataset, sampler, class_average, size)
    c = default_config()
    c.data.dataset = dataset
    c.model.parametrisation = "score"
    c.training.batch_size = 128
    c.ema.decay = 0.999
    c.ema.warmup = False  # the authors' EMA has no warm-up (over 300k steps it does not matter)
    if dataset == "cifar10":
        c.model.name = "ncsnpp"  # the class defaults are DDPM++ deep; these make it NCSN++ deep
        c.model.ncsnpp.update(embedding="fourier", fir=True, progressive="none", progressive_input="residual")
        train = TRAINING["cifar10"]
    else:
        c.model.name = "ncsnv2_deeper"
        c.model.ncsnv2_deeper.update(ngf=128, num_classes=1000)
        train = TRAINING["28x28"]
    c.optim.update(lr=train["lr"], warmup_steps=train["warmup_steps"], grad_clip=train["grad_clip"])
    c.training.n_iters = train["n_iters"]
    c.training.ckpt_every = 10_000
    c.training.sample_every = 50_000
    c.training.sample_grid_steps = 1000

    c.sampling.method = sampler
    c.sampling.start = "class_average_authors" if class_average else "published"
    c.sampling[sampler].update(published.settings(dataset, sampler, class_average=class_average))
    c.sampling[sampler].n_steps = published.PUBLISHED_LEVELS
    c.sampling.n_samples = 64  # --mode=sample's grid; --mode=eval draws eval.n_samples
    c.sampling.batch_size = 512
    c.eval.n_samples = EVAL_SAMPLES
    c.eval.bpd_examples = 10_000  # the whole test split
    if size == "cpu":
        _cpu_sized(c, dataset)
    return c


def _cpu_sized(c, dataset: str) -> None:
    """Shrinks a preset to two CPU cores; the sampler's settings, parametrisation and start stay the paper's."""
    c.data.dataset = "embedded_mnist"  # real digits, no network; the published prior is MNIST's
    if dataset == "cifar10":
        # 28x28x1 digits: two downsamplings (28 -> 14 -> 7), attention at 7x7.
        c.model.ncsnpp.update(nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,), dropout=0.0)
    else:
        c.model.ncsnv2_deeper.update(ngf=16)
    c.training.update(batch_size=64, n_iters=1_200, log_every=50, ckpt_every=400, sample_every=0)
    c.optim.update(lr=1e-3, warmup_steps=100, grad_clip=1.0)
    c.ema.update(decay=0.995, warmup=True)
    c.sampling.batch_size = 64
    c.eval.update(n_samples=CPU_EVAL_SAMPLES, bpd_examples=0)  # bits/dim: opt in with --config.eval.bpd_examples
