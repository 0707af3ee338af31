"""The CPU ablation: GBM against VE/VP, weightings, prior, sampler extras, on the embedded MNIST digits.

    python -m dale_langevin.ablations --config=configs/ablation_cpu.py --workdir=/tmp/ablation

Five trainings (GBM with the three M-DSM weightings, VE, VP) of the demo U-Net for the same number of
steps, eleven sampled rows, and FID/KID against network evaluations for five samplers. Sized for 2
CPU cores (63 CPU-minutes measured, about 32 minutes on 2 idle cores); the table it wrote is
docs/ablation_cpu.md. For accelerators, see
configs/ablation_mnist.py.
"""

import importlib.util
import os

from ml_collections import ConfigDict


def _demo_config():
    # The demo config by path: configs/ is not a package, and config files are loaded by path.
    spec = importlib.util.spec_from_file_location("_demo_config", os.path.join(os.path.dirname(__file__), "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    """The demo's data, network and optimizer; a short equal budget per training, 100-level samplers."""
    c = _demo_config()
    c.training.n_iters = 250
    c.training.ckpt_every = 250
    c.training.keep_checkpoints = 1
    c.optim.warmup_steps = 50
    c.ema.decay = 0.99
    c.sampling.n_steps = 100  # plus the demo's 10 noise-free final updates ("extras on")
    c.sampling.batch_size = 100

    c.ablation = ConfigDict()
    c.ablation.rows = "all"  # comma-separated names from dale_langevin.ablations.ROW_NAMES, or all
    c.ablation.curves = "gbm_dale_langevin,gbm_sign_agnostic,ve_euler_maruyama,vp_euler_maruyama,gbm_ode"
    c.ablation.nfe_steps = (10, 30)  # extra sampler levels for the curves (besides sampling.n_steps)
    c.ablation.n_samples = 200
    return c
