"""Experiment configuration: the shared defaults, validation at start, and builders from a config.

The config is read-only once ``main`` has parsed it; models and math receive plain keyword
arguments built here (``make_model``, ``make_process``, ``sampler_kwargs``), never the ConfigDict.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from dale_langevin import data, fast, hostmem, inception, ode, parallel
from dale_langevin.losses import T_SAMPLINGS
from dale_langevin.models import ScoreUNet
from dale_langevin.process import WEIGHTINGS, DiffusionProcess, get_process

STARTS = ("per_pixel", "scalar", "class_average")
INCEPTION_MODES = ("auto", "on", "off")
DTYPES = ("float32", "bfloat16")
REQUIRED = (
    "seed", "host_device_count", "host_allocator", "process.name", "data.dataset", "data.data_dir", "data.download",
    "model.channels", "model.channel_mult", "model.num_res_blocks", "model.attn_resolutions", "model.dropout",
    "model.dtype", "training.batch_size", "training.n_iters", "training.weighting", "training.t_sampling",
    "training.n_time_levels", "training.t_min", "training.log_every", "training.ckpt_every",
    "training.keep_checkpoints", "training.sample_every", "training.sample_grid_steps", "optim.lr",
    "optim.beta1", "optim.beta2", "optim.eps", "optim.warmup_steps", "optim.grad_clip", "ema.decay",
    "ema.warmup", "sampling.method", "sampling.n_steps", "sampling.step_size", "sampling.n_inner",
    "sampling.noise_decay", "sampling.denoise_steps", "sampling.t_end", "sampling.start",
    "sampling.ode_solver", "sampling.ode_t_end", "sampling.eta", "sampling.fast_t_end",
    "sampling.fast_denoise_steps",
    "sampling.n_samples", "sampling.batch_size", "eval.classifier_epochs", "eval.kid_subsets",
    "eval.kid_subset_size", "eval.n_nearest", "eval.inception", "eval.inception_path", "eval.inception_url",
    "eval.inception_batch_size",
)


def default_config() -> ml_collections.ConfigDict:
    """The shared defaults (published settings); see the comments for each field's meaning and units."""
    c = ml_collections.ConfigDict()
    c.seed = 42
    # CPU hosts: pmap over this many forced host devices; 0 = one per core. Ignored on GPU/TPU.
    c.host_device_count = 0
    # Host malloc (dale_langevin/hostmem.py): auto = retain on CPU-only installs (reuse XLA's per-step
    # buffers instead of page-faulting them in again, ~20% of a CPU train step) | retain | system.
    c.host_allocator = "auto"

    c.process = ml_collections.ConfigDict()
    c.process.name = "gbm"  # gbm (multiplicative) | ve | vp (additive, for ablations)
    c.process.gbm = dict(sigma=0.8, mu=config_dict.placeholder(float), T=1.0, schedule="constant",
                         sigma_end=config_dict.placeholder(float), data_offset=1.0)
    c.process.ve = dict(sigma_min=0.01, sigma_max=50.0, T=1.0)
    c.process.vp = dict(beta_min=0.1, beta_max=20.0, T=1.0)

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "mnist"  # embedded_mnist | mnist | fashion_mnist | kmnist | cifar10
    c.data.data_dir = config_dict.placeholder(str)  # TFDS data dir (a gs:// bucket on TPU VMs)
    c.data.download = True  # let TFDS download when the data are not prepared (needs network)
    c.data.shuffle_buffer = 10_000

    c.model = ml_collections.ConfigDict()
    c.model.channels = 64
    c.model.channel_mult = (1, 2, 2)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (7,)
    c.model.dropout = 0.1
    c.model.dtype = "float32"  # bfloat16 is an option on TPU/GPU; the sampler's exp/log stay float32

    c.training = ml_collections.ConfigDict()
    c.training.batch_size = 128  # global, over all devices and hosts
    c.training.n_iters = 300_000
    c.training.weighting = "published"  # published (v_t^2) | noise (v_t) | likelihood (sigma^2)
    c.training.t_sampling = "grid"  # grid: t = k/N, k in 1..N-1 (published) | uniform on [t_min, T]
    c.training.n_time_levels = 1000  # N
    c.training.t_min = 1e-3
    c.training.log_every = 100
    c.training.ckpt_every = 5_000
    c.training.keep_checkpoints = 3
    c.training.sample_every = 20_000  # write a sample grid PNG; 0 = never during training
    c.training.sample_grid_steps = 200  # sampler levels for those periodic grids

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-4
    c.optim.beta1 = 0.9
    c.optim.beta2 = 0.999
    c.optim.eps = 1e-8
    c.optim.warmup_steps = 5_000
    c.optim.grad_clip = 1.0  # global norm; 0 disables

    c.ema = ml_collections.ConfigDict()
    c.ema.decay = 0.999
    c.ema.warmup = True  # effective decay min(decay, (1 + n) / (10 + n)): early EMA is not the init

    c.sampling = ml_collections.ConfigDict()
    # dale_langevin | sign_agnostic | ode | ddim | dpm2m (gbm); euler_maruyama (ve, vp)
    c.sampling.method = "dale_langevin"
    c.sampling.ode_solver = "dpm2"  # method=ode: euler | heun | dpm1 | dpm2 (probability-flow ODE, log space)
    c.sampling.ode_t_end = 1e-3  # method=ode: integrate down to this time, then one Tweedie step
    # Stochastic few-step samplers in log space (dale_langevin/fast.py), one score evaluation per step,
    # n_steps + fast_denoise_steps in all: ddim (first order) | dpm2m (second-order multistep).
    c.sampling.eta = 1.0  # method=ddim|dpm2m: noise in [0, 1]; 1 = reverse SDE (ddim: ancestral), 0 = the ODE
    c.sampling.fast_t_end = 5e-3  # method=ddim|dpm2m: last time of the log_std grid
    c.sampling.fast_denoise_steps = 10  # method=ddim|dpm2m: Tweedie updates at fast_t_end (1 = posterior mean)
    c.sampling.n_steps = 1000
    c.sampling.step_size = config_dict.placeholder(float)  # None: (T - t_end) / n_steps
    c.sampling.n_inner = 1
    c.sampling.noise_decay = 1.0
    c.sampling.denoise_steps = 0
    c.sampling.t_end = 0.0
    c.sampling.start = "per_pixel"  # per_pixel | scalar (published prior fit) | class_average
    c.sampling.n_samples = 64
    c.sampling.batch_size = 64  # global, split over devices

    c.eval = ml_collections.ConfigDict()
    c.eval.classifier_epochs = 3  # the feature classifier for offline FID/KID, trained once per workdir
    c.eval.kid_subsets = 64  # published KID protocol: 64 subsets of 64
    c.eval.kid_subset_size = 64
    c.eval.n_nearest = 16  # samples shown beside their nearest training image
    # Inception-V3 FID/KID (TTUR graph, comparable with papers): auto = when the weights can be had,
    # else the report says why | on = stop at start if they cannot | off = skip.
    c.eval.inception = "auto"
    c.eval.inception_path = config_dict.placeholder(str)  # local classify_image_graph_def.pb or inception-2015-12-05.tgz
    # Fetched once into ~/.cache/dale_langevin (or $XDG_CACHE_HOME's) when no path is set; "" = never download.
    c.eval.inception_url = inception.DEFAULT_URL
    c.eval.inception_batch_size = 50
    return c


def _get(config, path: str):
    node = config
    for part in path.split("."):
        if part not in node:
            raise ValueError(f"config is missing field 'config.{path}' (start from dale_langevin.config.default_config())")
        node = node[part]
    return node


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ValueError(f"config.{field} {message}")


def make_process(config) -> DiffusionProcess:
    """The forward process named by ``config.process.name`` with its keyword arguments."""
    name = config.process.name
    _require(name in ("gbm", "ve", "vp"), "process.name", f"must be gbm, ve or vp, got {name!r}")
    try:
        return get_process(name, **config.process[name].to_dict())
    except (TypeError, ValueError) as err:
        raise ValueError(f"config.process.{name}: {err}") from err


def make_model(config) -> ScoreUNet:
    """The U-Net from ``config.model`` (plain keyword arguments)."""
    import jax.numpy as jnp

    m = config.model
    return ScoreUNet(
        channels=m.channels, channel_mult=tuple(m.channel_mult), num_res_blocks=m.num_res_blocks,
        attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout, dtype=getattr(jnp, m.dtype),
    )


def sampling_methods(config, process: DiffusionProcess) -> tuple[str, ...]:
    """Methods ``config.sampling.method`` may name: the process's SDE samplers, plus ``ode``, ``ddim``, ``dpm2m`` for GBM."""
    return tuple(process.sampler_methods) + (("ode",) + fast.SOLVERS if config.process.name == "gbm" else ())


def sampler_kwargs(config, n_steps: int | None = None) -> dict:
    """Keyword arguments of :func:`dale_langevin.samplers.sample` from ``config.sampling``."""
    s = config.sampling
    return dict(
        method=s.method, n_steps=n_steps or s.n_steps, t_end=s.t_end, step_size=s.step_size,
        n_inner=s.n_inner, noise_decay=s.noise_decay, denoise_steps=s.denoise_steps,
    )


def validate(config) -> None:
    """Checks a config before any work starts; raises ``ValueError`` naming the offending field."""
    for path in REQUIRED:
        _get(config, path)
    _require(config.host_allocator in hostmem.MODES, "host_allocator",
             f"must be one of {hostmem.MODES}, got {config.host_allocator!r}")
    process = make_process(config)
    spec = data.get_spec(config.data.dataset)
    t = config.training
    parallel.check_divisible(t.batch_size, "config.training.batch_size")
    for field in ("n_iters", "log_every", "ckpt_every", "keep_checkpoints", "n_time_levels"):
        _require(isinstance(t[field], int) and t[field] >= 1, f"training.{field}", f"must be an int >= 1, got {t[field]!r}")
    _require(t.weighting in WEIGHTINGS, "training.weighting", f"must be one of {WEIGHTINGS}, got {t.weighting!r}")
    _require(t.t_sampling in T_SAMPLINGS, "training.t_sampling", f"must be one of {T_SAMPLINGS}, got {t.t_sampling!r}")
    _require(0 < t.t_min < process.T, "training.t_min", f"must lie in (0, T), got {t.t_min}")
    _require(t.sample_every >= 0, "training.sample_every", "must be >= 0 (0 = never)")
    m = config.model
    _require(m.dtype in DTYPES, "model.dtype", f"must be one of {DTYPES}, got {m.dtype!r}")
    factor = 2 ** (len(m.channel_mult) - 1)
    _require(spec.image_shape[0] % factor == 0, "model.channel_mult",
             f"has {len(m.channel_mult)} levels; {spec.name} images of size {spec.image_shape[0]} must divide by {factor}")
    o = config.optim
    _require(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    _require(o.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 disables clipping)")
    _require(0 <= config.ema.decay < 1, "ema.decay", f"must lie in [0, 1), got {config.ema.decay}")
    s = config.sampling
    methods = sampling_methods(config, process)
    _require(s.method in methods, "sampling.method",
             f"must be one of {methods} for process {config.process.name!r}, got {s.method!r}")
    if s.method == "ode":
        _require(s.ode_solver in ode.SOLVERS, "sampling.ode_solver", f"must be one of {ode.SOLVERS}, got {s.ode_solver!r}")
        _require(0 < s.ode_t_end < process.T, "sampling.ode_t_end", f"must lie in (0, T), got {s.ode_t_end}")
    if s.method in fast.SOLVERS:
        _require(isinstance(s.eta, (int, float)) and not isinstance(s.eta, bool) and 0 <= s.eta <= 1, "sampling.eta",
                 f"must be a number in [0, 1] (1 = reverse SDE, 0 = probability-flow ODE), got {s.eta!r}")
        _require(0 < s.fast_t_end < process.T, "sampling.fast_t_end", f"must lie in (0, T), got {s.fast_t_end}")
        _require(isinstance(s.fast_denoise_steps, int) and s.fast_denoise_steps >= 0, "sampling.fast_denoise_steps",
                 f"must be an int >= 0, got {s.fast_denoise_steps!r}")
    _require(isinstance(s.n_steps, int) and s.n_steps >= 1, "sampling.n_steps", f"must be an int >= 1, got {s.n_steps!r}")
    _require(s.start in STARTS, "sampling.start", f"must be one of {STARTS}, got {s.start!r}")
    _require(s.n_samples >= 1, "sampling.n_samples", "must be >= 1")
    for field in ("classifier_epochs", "kid_subsets", "kid_subset_size", "n_nearest", "inception_batch_size"):
        _require(config.eval[field] >= 1, f"eval.{field}", f"must be >= 1, got {config.eval[field]!r}")
    _require(config.eval.inception in INCEPTION_MODES, "eval.inception",
             f"must be one of {INCEPTION_MODES}, got {config.eval.inception!r}")
    _require(s.batch_size >= 1 and s.batch_size % parallel.local_device_count() == 0, "sampling.batch_size",
             f"={s.batch_size} must be a positive multiple of the local device count {parallel.local_device_count()}")
