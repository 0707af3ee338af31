"""The config schema: the shared defaults, validation at start, and builders from a config.

The config is read-only once ``main`` has parsed it; models and math receive plain keyword
arguments built here (:func:`make_model`, :func:`make_process`, :func:`sampler_settings`), never
the ConfigDict. Two groups come from registries rather than from this file, so adding a process or
a sampler needs no edit here:

* ``config.process.<name>``: the constructor arguments (dataclass fields) of every process in
  :data:`dale_langevin.processes.PROCESSES`;
* ``config.sampling.<method>``: the settings of every sampler in :mod:`dale_langevin.samplers`
  (its keyword-only parameters and their defaults);
* ``config.model.<name>``: the fields of every network in :data:`dale_langevin.nets.NETWORKS`
  (its dataclass fields but ``dtype`` and ``conv``, which the builder sets).

:func:`validate` requires every field of :func:`default_config` (:func:`required_fields`: only the
groups of the selected process and sampler) and no field it lacks, and checks each one before any
work starts. The math objects check their own arguments; this module maps their errors to config paths.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from dale_langevin import distillation, losses, samplers
from dale_langevin.checks import is_number
from dale_langevin.cpu import conv as cpu_conv
from dale_langevin.nets import NETWORKS, conditioning_dtype, network_fields
from dale_langevin.pipeline import data, parallel
from dale_langevin.processes import PROCESSES, DiffusionProcess, get_process
from dale_langevin.samplers import published

# Where sampling starts (dale_langevin.pipeline.generate.initial_state).
STARTS = ("per_pixel", "per_channel", "scalar", "published", "class_average", "class_average_authors")
INCEPTION_MODES = ("auto", "on", "off")
DTYPES = ("float32", "bfloat16")
SAMPLING_FIELDS = ("method", "start", "n_samples", "batch_size")  # the rest of config.sampling: sampler groups


def _group(defaults: Mapping[str, Any], types: Mapping[str, type]) -> ml_collections.ConfigDict:
    """A config group of ``defaults``; a ``None`` default becomes a placeholder of its type (settable from flags)."""
    return ml_collections.ConfigDict(
        {k: config_dict.placeholder(types[k]) if v is None else v for k, v in defaults.items()}
    )


def _dataclass_group(cls: type) -> ml_collections.ConfigDict:
    """The constructor arguments of a process dataclass with their defaults."""
    hints = typing.get_type_hints(cls)
    defaults, types = {}, {}
    for f in dataclasses.fields(cls):
        defaults[f.name] = f.default
        if f.default is None:
            types[f.name] = next(a for a in typing.get_args(hints[f.name]) if a is not type(None))
    return _group(defaults, types)


def default_config() -> ml_collections.ConfigDict:
    """The shared defaults (published settings); see the comments for each field's meaning and units.

    ``config.process.<name>`` and ``config.sampling.<method>`` are built from the registries:
    their fields are documented with :class:`~dale_langevin.processes.gbm.GBM` (and VE/VP) and
    with each sampler's function (``dale_langevin.samplers.get(method).fn``).
    """
    c = ml_collections.ConfigDict()
    c.seed = 42
    # CPU hosts: pmap over this many forced host devices; 0 = one per core. Ignored on GPU/TPU.
    c.host_device_count = 0
    # Host malloc (dale_langevin/cpu/hostmem.py): auto = retain on CPU-only installs (reuse XLA's per-step
    # buffers instead of page-faulting them in again, ~20% of a CPU train step) | retain | system.
    c.host_allocator = "auto"

    c.process = ml_collections.ConfigDict()
    c.process.name = "gbm"  # gbm (multiplicative) | ve | vp | log_ve (additive, for ablations)
    for name, cls in PROCESSES.items():
        c.process[name] = _dataclass_group(cls)

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "mnist"  # embedded_mnist | mnist | fashion_mnist | kmnist | cifar10
    c.data.data_dir = config_dict.placeholder(str)  # TFDS data dir (a gs:// bucket on TPU VMs)
    c.data.download = True  # let TFDS download when the data are not prepared (needs network)
    c.data.read_threads = 4  # threads reading and encoding batches ahead of the train step (0: inline)

    c.model = ml_collections.ConfigDict()
    c.model.name = "unet"  # unet (ours, CPU-sized) | ncsnv2_deeper (paper, 28x28 sets) | ncsnpp (paper, CIFAR-10)
    # How the output becomes the score (dale_langevin.losses.Parametrisation): log_noise = log-space noise
    # from log x_t (ours) | score = the ordinary score s from x_t, h = x s (the paper authors').
    c.model.parametrisation = "log_noise"
    c.model.dtype = "float32"  # bfloat16 is an option on TPU/GPU; the sampler's exp/log stay float32
    for name in NETWORKS:
        c.model[name] = ml_collections.ConfigDict(network_fields(name))
    # Our U-Net at MNIST size (the class defaults are the smallest sensible net).
    c.model.unet.update(channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(7,), dropout=0.1)

    c.training = ml_collections.ConfigDict()
    c.training.batch_size = 128  # global, over all devices and hosts
    c.training.n_iters = 300_000
    c.training.weighting = "published"  # published (v_t^2) | noise (v_t) | likelihood (sigma^2)
    c.training.t_sampling = "grid"  # grid: t = k/N, k in 1..N-1 (published) | uniform on [t_min, T]
    c.training.n_time_levels = 1000  # N, the training time grid (not the sampler's levels)
    c.training.t_min = 1e-3
    c.training.log_every = 100
    c.training.ckpt_every = 5_000
    c.training.keep_checkpoints = 3
    c.training.sample_every = 20_000  # write a sample grid PNG; 0 = never during training
    c.training.sample_grid_steps = 200  # the sampler's n_steps for those periodic grids (if it has n_steps)
    c.training.allow_resume_changes = False  # resume checkpoints although model/data/optimiser fields changed

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
    c.sampling.method = "dale_langevin"  # a registered sampler: dale_langevin.samplers.names()
    # per_pixel | per_channel | scalar: the prior fitted per pixel, per channel, or one pair (the published
    # kind of fit) | published: the paper's constants | class_average: class means pushed to T by the exact
    # kernel | class_average_authors: pushed with the published prior as GBM drift and volatility (the authors')
    c.sampling.start = "per_pixel"
    c.sampling.n_samples = 64
    c.sampling.batch_size = 64  # per call, split over this host's devices
    for name in samplers.names():
        if name in SAMPLING_FIELDS:
            raise ValueError(f"sampler name {name!r} collides with the field config.sampling.{name}")
        spec = samplers.get(name)
        c.sampling[name] = _group(spec.defaults, spec.types)

    # Distillation (--mode=distill; dale_langevin/distillation.py): a config with distill.teacher_workdir set
    # describes a *student* run. Its work directory holds the student's checkpoints, and --mode=sample and
    # --mode=eval draw from the student with config.sampling.method = "renoise", whose settings
    # (sampling.renoise.n_steps, t_end, rho) are the student's times; a student of n steps also samples at
    # any n_steps whose times are among its own (n = 4, rho 1: 1, 2 and 4).
    c.distill = ml_collections.ConfigDict()
    c.distill.teacher_workdir = ""  # the trained run to distil (its latest EMA params); "" = not a student run
    c.distill.n_iters = 600
    c.distill.batch_size = 32  # global, over all devices and hosts
    c.distill.lr = 5e-5  # Adam for the student (optim's betas, eps and clipping; no warm-up)
    c.distill.fake_lr = 1e-4  # Adam for the fake-score network
    # Fake-score M-DSM updates per student update. With 1 the fake score lags and the student circles
    # (1-D test; on the CPU model FID rose from 35 to 45 between steps 600 and 1000); 4 kept it improving.
    c.distill.fake_updates = 4
    c.distill.t_min = 0.02  # the DMD loss draws t ~ U[t_min T, t_max T]
    c.distill.t_max = 0.98
    c.distill.ema = 0.99  # the student's EMA decay (with ema.warmup), sampled by --mode=sample
    c.distill.log_every = 50
    c.distill.ckpt_every = 200
    c.distill.sample_every = 0  # write a grid of the student's samples every this many steps; 0 = never

    c.eval = ml_collections.ConfigDict()
    c.eval.classifier_epochs = 3  # the feature classifier for offline FID/KID, trained once per workdir
    c.eval.kid_subsets = 64  # published KID protocol: 64 subsets of 64
    c.eval.kid_subset_size = 64
    c.eval.n_nearest = 16  # samples shown beside their nearest training image
    # Inception-V3 FID/KID (TTUR graph, comparable with papers): auto = when the weights can be had,
    # else the report says why | on = stop at start if they cannot | off = skip.
    c.eval.inception = "auto"
    c.eval.inception_path = config_dict.placeholder(
        str
    )  # local classify_image_graph_def.pb or inception-2015-12-05.tgz
    # Fetched once into ~/.cache/dale_langevin (or $XDG_CACHE_HOME's) when no path is set: None = the
    # TTUR archive's URL (dale_langevin.evaluation.inception.DEFAULT_URL), "" = never download.
    c.eval.inception_url = config_dict.placeholder(str)
    c.eval.inception_batch_size = 50
    # How many samples --mode=eval draws and scores (over all devices and processes; samples.npz is drawn
    # again when it holds another count): None = config.sampling.n_samples. At least 2 (FID, KID).
    c.eval.n_samples = config_dict.placeholder(int)
    # Where the test split's features and their mean/covariance are cached, one .npz per dataset, split, size
    # and feature extractor (offline classifier, Inception-V3), as score_sde ships assets/stats: a folder or a
    # gs:// path; None = reference_stats/ in the Inception weights' cache folder (~/.cache/dale_langevin).
    c.eval.reference_dir = config_dict.placeholder(str)
    # Bits/dim of the 8-bit test split through the probability-flow ODE (GBM only; Hutchinson trace estimator,
    # uniform dequantisation u = (pixel + U[0, 1)) / 256; dale_langevin/evaluation/likelihood.py):
    c.eval.bpd_examples = 0  # test images used (a fixed random subset); 0 = skip (the CPU default: slow)
    c.eval.bpd_steps = 100  # Heun steps of the ODE from t_min to T (2 network JVPs each)
    c.eval.bpd_batch_size = 64  # images per call, split over this host's devices
    return c


def load_config_file(path: str | os.PathLike, *args, **kwargs) -> ml_collections.ConfigDict:
    """``get_config(*args, **kwargs)`` of the config file at ``path`` (``configs/*.py``: loaded by path, not a package)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config file {path}")
    name = "_dale_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args, **kwargs)


def _leaves(node, prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        out += _leaves(value, path + ".") if isinstance(value, ml_collections.ConfigDict) else [path]
    return out


def required_fields(config) -> tuple[str, ...]:
    """The fields ``config`` must have: every leaf of :func:`default_config`, except the groups of the
    processes, networks and samplers it does not select."""
    process, method = config.get("process", {}).get("name"), config.get("sampling", {}).get("method")
    network = config.get("model", {}).get("name")
    skip = tuple(f"process.{n}." for n in PROCESSES if n != process)
    skip += tuple(f"sampling.{n}." for n in samplers.names() if n != method)
    skip += tuple(f"model.{n}." for n in NETWORKS if n != network)
    return tuple(p for p in _leaves(default_config()) if not p.startswith(skip))


def has_field(config, path: str) -> bool:
    """True if the dotted ``path`` (``"sampling.ode.solver"``) names a field of ``config``."""
    node = config
    for part in path.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


def _at(path: str, err: Exception, fields=()) -> ValueError:
    """``err`` re-raised under the config path ``path``; a message that starts with one of ``fields`` names it."""
    message = str(err)
    head = message.split(" ", 1)[0]
    if head in fields:
        return ValueError(f"config.{path}.{message}")
    return ValueError(f"config.{path}: {message}")


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ValueError(f"config.{field} {message}")


def make_process(config) -> DiffusionProcess:
    """The forward process named by ``config.process.name`` with its keyword arguments."""
    name = config.process.name
    _require(name in PROCESSES, "process.name", f"must be one of {tuple(PROCESSES)}, got {name!r}")
    try:
        return get_process(name, **config.process[name].to_dict())
    except (TypeError, ValueError) as err:
        own = f"{PROCESSES[name].__name__}."  # "GBM.sigma must ..." -> "config.process.gbm.sigma must ..."
        if str(err).startswith(own):
            raise ValueError(f"config.process.{name}.{str(err)[len(own) :]}") from err
        raise _at(f"process.{name}", err) from err


def _network_class(config) -> type:
    """The class of ``config.model.name``; ``ValueError`` naming the field when it is not a registered network."""
    name = config.model.name
    _require(name in NETWORKS, "model.name", f"must be one of {tuple(NETWORKS)}, got {name!r}")
    return NETWORKS[name]


def make_model(config, backend: str | None = None):
    """The network ``config.model.name`` with its group's fields, and the convolution
    :func:`dale_langevin.cpu.conv.for_backend` picks (``backend`` defaults to ``jax.default_backend()``)."""
    import jax
    import jax.numpy as jnp

    m = config.model
    cls = _network_class(config)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in m[m.name].to_dict().items()}
    return cls(**fields, dtype=getattr(jnp, m.dtype), conv=cpu_conv.for_backend(backend or jax.default_backend()))


def make_parametrisation(config) -> losses.Parametrisation:
    """The :class:`~dale_langevin.losses.Parametrisation` of ``config.model``: its kind, and the network's
    conditioning (a ``level_index`` network embeds ``config.model.<name>.num_classes`` levels)."""
    m = config.model
    conditioning = _network_class(config).conditioning
    n_levels = m[m.name].num_classes if conditioning == "level_index" else 1000
    try:
        return losses.Parametrisation(m.parametrisation, conditioning, n_levels)
    except ValueError as err:
        raise _at("model", err) from err


def eval_n_samples(config) -> int:
    """How many samples ``--mode=eval`` scores: ``config.eval.n_samples``, or ``config.sampling.n_samples`` if None."""
    n = config.eval.n_samples
    return config.sampling.n_samples if n is None else n


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def sampler_settings(config, **overrides) -> tuple[str, dict]:
    """``(method, settings)`` of the configured sampler: ``config.sampling.<method>`` updated by ``overrides``."""
    method = config.sampling.method
    spec = samplers.get(method)
    return method, spec.settings({**config.sampling[method].to_dict(), **overrides})


# What a resumed run must share with the run that wrote its checkpoints: the state's shapes, the data
# stream and the trajectory. Everything else (n_iters, intervals, sampling, eval, paths) may change.
RESUME_FIELDS = (
    "seed",
    "process.name",
    "data.dataset",
    # Retired with the tf.data stream: a config.json holding it is a run whose batch sequence the
    # Grain stream (global batch k a pure function of seed and k) does not continue.
    "data.shuffle_buffer",
    "model",
    "training.batch_size",
    "training.weighting",
    "training.t_sampling",
    "training.n_time_levels",
    "training.t_min",
    "optim",
    "ema",
)


# A student run's trajectory: what it distils and how (n_iters and the logging cadence may change).
DISTILL_RESUME_FIELDS = tuple(
    f"distill.{k}" for k in ("teacher_workdir", "batch_size", "lr", "fake_lr", "fake_updates", "t_min", "t_max", "ema")
)


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, Mapping):
        out = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.loads(json.dumps(node, default=str))}  # as config.json holds it (lists, not tuples)


def _with_model_groups(saved: Mapping[str, Any]) -> Mapping[str, Any]:
    """A ``config.json`` written before ``config.model.name`` (the U-Net's fields flat in ``model``) in today's layout."""
    model = saved.get("model")
    if not isinstance(model, Mapping) or "name" in model:
        return saved
    unet = {k: v for k, v in model.items() if k in network_fields("unet")}
    rest = {k: v for k, v in model.items() if k not in unet}
    groups = {n: json.loads(json.dumps(network_fields(n))) for n in NETWORKS if n != "unet"}
    return {**saved, "model": {"name": "unet", "parametrisation": "log_noise", **rest, "unet": unet, **groups}}


def trajectory_fields(config) -> tuple[str, ...]:
    """The config paths that fix a training's trajectory (and a resumed run must keep): :data:`RESUME_FIELDS`,
    the selected process's group ``process.<name>`` and, for a student run, :data:`DISTILL_RESUME_FIELDS` and
    ``sampling.renoise``."""
    student = (*DISTILL_RESUME_FIELDS, "sampling.renoise") if is_student(config) else ()
    return (*RESUME_FIELDS, f"process.{config.process.name}", *student)


def is_student(config) -> bool:
    """True if ``config`` describes a distilled student's run (``config.distill.teacher_workdir`` is set)."""
    return bool(config.distill.teacher_workdir)


def resume_differences(saved: Mapping[str, Any], config) -> list[str]:
    """The fields a resumed run must keep (:data:`RESUME_FIELDS` and ``process.<name>``) where ``saved`` differs.

    ``saved`` is the ``config.json`` of the run that wrote the checkpoints; each entry reads
    ``"config.model.unet.channels: 8 -> 16"``. Empty when the run may resume.
    """
    fields = trajectory_fields(config)
    old, new = _flat(_with_model_groups(saved)), _flat(config.to_dict())
    return [
        f"config.{p}: {old.get(p)!r} -> {new.get(p)!r}"
        for p in sorted(set(old) | set(new))
        if any(p == f or p.startswith(f + ".") for f in fields) and old.get(p) != new.get(p)
    ]


def loss_settings(config) -> dict:
    """The keyword arguments of :func:`dale_langevin.losses.dsm_loss` from ``config.training``."""
    t = config.training
    return dict(weighting=t.weighting, t_sampling=t.t_sampling, n_time_levels=t.n_time_levels, t_min=t.t_min)


def _validate_sampling(config, process: DiffusionProcess) -> None:
    s = config.sampling
    try:
        spec = samplers.get(s.method)
    except ValueError as err:
        raise _at("sampling.method", err) from err
    if process.name not in spec.processes:
        raise ValueError(
            f"config.sampling.method={s.method!r} does not support process {process.name!r}; "
            f"samplers for it: {samplers.names(process.name)}"
        )
    group = s[s.method].to_dict()
    try:
        spec.validate(process, group)
    except ValueError as err:
        raise _at(f"sampling.{s.method}", err, spec.defaults) from err
    if config.training.sample_every:  # the periodic grids' variant of the sampler
        try:
            spec.validate(process, {**group, **samplers.levels(s.method, config.training.sample_grid_steps)})
        except ValueError as err:
            raise ValueError(
                f"config.training.sample_grid_steps={config.training.sample_grid_steps!r} makes the "
                f"periodic grids' sampler invalid: {err}"
            ) from err
    _require(s.start in STARTS, "sampling.start", f"must be one of {STARTS}, got {s.start!r}")
    if s.start in ("published", "class_average_authors"):
        _require(
            published.dataset_key(config.data.dataset) in published.PRIORS,
            "sampling.start",
            f"={s.start!r} needs the paper's prior constants; it gives them for {tuple(published.PRIORS)}, "
            f"not {config.data.dataset!r}",
        )
        _require(
            process.name == "gbm", "sampling.start", f"={s.start!r} is a GBM (log-normal) start, not {process.name!r}'s"
        )
    _require(
        isinstance(s.n_samples, int) and s.n_samples >= 1,
        "sampling.n_samples",
        f"must be an int >= 1, got {s.n_samples!r}",
    )
    parallel.per_device_batch(s.batch_size, "config.sampling.batch_size", local=True)


def _validate_model(config, spec) -> None:
    m = config.model
    _network_class(config)
    _require(
        m.parametrisation in losses.PARAMETRISATIONS,
        "model.parametrisation",
        f"must be one of {losses.PARAMETRISATIONS}, got {m.parametrisation!r}",
    )
    _require(m.dtype in DTYPES, "model.dtype", f"must be one of {DTYPES}, got {m.dtype!r}")
    group, path, defaults = m[m.name], f"model.{m.name}", network_fields(m.name)
    for field, value in group.items():
        default = defaults[field]
        if isinstance(default, bool):
            _require(isinstance(value, bool), f"{path}.{field}", f"must be a bool, got {value!r}")
        elif isinstance(default, int):
            _require(
                _is_int(value) and value >= 1,
                f"{path}.{field}",
                f"must be an int >= 1, got {value!r}",
            )
        elif isinstance(default, tuple) and field.endswith("mult"):
            _require(
                len(value) >= 1 and all(isinstance(v, int) and v >= 1 for v in value),
                f"{path}.{field}",
                f"must be a non-empty sequence of ints >= 1, got {value!r}",
            )
    if "dropout" in group:
        d = group.dropout
        _require(is_number(d) and 0 <= d < 1, f"{path}.dropout", f"must lie in [0, 1), got {d!r}")
    import jax

    model = make_model(config, backend="cpu")
    x = jax.ShapeDtypeStruct((1, *spec.image_shape), jax.numpy.float32)
    try:  # the network's own input check on shapes alone: its fields against this dataset's images
        model.check_inputs(x, jax.ShapeDtypeStruct((1,), conditioning_dtype(model)))
    except ValueError as err:
        raise ValueError(f"config.{path} is invalid for {spec.name} images {spec.image_shape}: {err}") from err


def _validate_distill(config, process: DiffusionProcess) -> None:
    d = config.distill
    _require(isinstance(d.teacher_workdir, str), "distill.teacher_workdir", 'must be a path (or "": no student)')
    for field in ("n_iters", "batch_size", "fake_updates", "log_every", "ckpt_every"):
        _require(_is_int(d[field]) and d[field] >= 1, f"distill.{field}", f"must be an int >= 1, got {d[field]!r}")
    _require(_is_int(d.sample_every) and d.sample_every >= 0, "distill.sample_every", "must be an int >= 0")
    parallel.per_device_batch(d.batch_size, "config.distill.batch_size")
    for field in ("lr", "fake_lr"):
        _require(is_number(d[field]) and d[field] > 0, f"distill.{field}", f"must be > 0, got {d[field]!r}")
    _require(is_number(d.ema) and 0 <= d.ema < 1, "distill.ema", f"must lie in [0, 1), got {d.ema!r}")
    try:
        distillation.check_time_range(d.t_min, d.t_max)
    except ValueError as err:  # its message names the field (distill.t_min, distill.t_max)
        raise ValueError(f"config.{err}") from err
    if is_student(config):
        _require(
            process.name == "gbm",
            "distill.teacher_workdir",
            f"distillation makes a multiplicative student of a GBM teacher; process.name is {process.name!r}",
        )


def unknown_fields(config) -> list[str]:
    """Leaves of ``config`` that :func:`default_config` does not have (``ablation.*`` excepted): typos, old names."""
    known = set(_leaves(default_config()))
    return [p for p in _leaves(config) if p not in known and not p.startswith("ablation.")]


def validate(config) -> None:
    """Checks a config before any work starts; raises ``ValueError`` naming the offending field.

    Every field of :func:`default_config` must be there (the selected process's and sampler's groups),
    and no other (a misspelt or renamed field would otherwise be ignored).
    """
    for path in required_fields(config):
        if not has_field(config, path):
            raise ValueError(
                f"config is missing field 'config.{path}' (start from dale_langevin.pipeline.config.default_config())"
            )
    unknown = unknown_fields(config)
    if unknown:
        hints = [
            f"config.{p}"
            + (
                f" (now config.sampling.<method>.{p.split('.')[-1]})"
                if p.startswith("sampling.") and p.count(".") == 1
                else f" (now config.model.unet.{p.split('.')[-1]})"
                if p.startswith("model.") and p.count(".") == 1 and p.split(".")[-1] in network_fields("unet")
                else " (removed: the training stream is a full permutation of the split every epoch)"
                if p == "data.shuffle_buffer"
                else ""
            )
            for p in unknown
        ]
        raise ValueError(
            f"unknown config field(s): {', '.join(hints)}; the fields are those of "
            "dale_langevin.pipeline.config.default_config()"
        )
    process = make_process(config)
    try:
        spec = data.get_spec(config.data.dataset)
    except ValueError as err:
        raise _at("data.dataset", err) from err
    threads = config.data.read_threads
    _require(
        isinstance(threads, int) and not isinstance(threads, bool) and threads >= 0,
        "data.read_threads",
        f"must be an int >= 0, got {threads!r}",
    )
    t = config.training
    parallel.per_device_batch(t.batch_size, "config.training.batch_size")
    for field in ("n_iters", "log_every", "ckpt_every", "keep_checkpoints"):
        _require(
            isinstance(t[field], int) and t[field] >= 1, f"training.{field}", f"must be an int >= 1, got {t[field]!r}"
        )
    for field in ("sample_every", "sample_grid_steps"):
        _require(
            isinstance(t[field], int) and t[field] >= 0, f"training.{field}", f"must be an int >= 0, got {t[field]!r}"
        )
    try:
        losses.check_settings(process, **loss_settings(config))
    except ValueError as err:
        raise _at("training", err, loss_settings(config)) from err
    _validate_model(config, spec)
    o = config.optim
    _require(is_number(o.lr) and o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    _require(is_number(o.grad_clip) and o.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 disables clipping)")
    _require(
        isinstance(o.warmup_steps, int) and o.warmup_steps >= 0,
        "optim.warmup_steps",
        f"must be an int >= 0, got {o.warmup_steps!r}",
    )
    for field in ("beta1", "beta2"):
        _require(is_number(o[field]) and 0 <= o[field] < 1, f"optim.{field}", f"must lie in [0, 1), got {o[field]!r}")
    _require(is_number(o.eps) and o.eps > 0, "optim.eps", f"must be > 0, got {o.eps!r}")
    _require(
        is_number(config.ema.decay) and 0 <= config.ema.decay < 1,
        "ema.decay",
        f"must lie in [0, 1), got {config.ema.decay}",
    )
    _validate_sampling(config, process)
    _validate_distill(config, process)
    e = config.eval
    for field in ("classifier_epochs", "kid_subsets", "kid_subset_size", "n_nearest", "inception_batch_size"):
        _require(isinstance(e[field], int) and e[field] >= 1, f"eval.{field}", f"must be an int >= 1, got {e[field]!r}")
    _require(e.inception in INCEPTION_MODES, "eval.inception", f"must be one of {INCEPTION_MODES}, got {e.inception!r}")
    _require(
        e.n_samples is None or (_is_int(e.n_samples) and e.n_samples >= 2),
        "eval.n_samples",
        f"must be an int >= 2, or None for config.sampling.n_samples, got {e.n_samples!r}",
    )
    _require(
        e.reference_dir is None or (isinstance(e.reference_dir, str) and e.reference_dir != ""),
        "eval.reference_dir",
        f"must be a folder (local or gs://), or None for the default cache, got {e.reference_dir!r}",
    )
    _require(
        _is_int(e.bpd_examples) and e.bpd_examples >= 0,
        "eval.bpd_examples",
        f"must be an int >= 0 (0 skips bits/dim), got {e.bpd_examples!r}",
    )
    _require(_is_int(e.bpd_steps) and e.bpd_steps >= 1, "eval.bpd_steps", f"must be an int >= 1, got {e.bpd_steps!r}")
    parallel.per_device_batch(e.bpd_batch_size, "config.eval.bpd_batch_size", local=True)
