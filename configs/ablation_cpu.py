"""The CPU ablation: GBM against VE/VP, weightings, prior, sampler extras, on the embedded MNIST digits.

    python -m dale_langevin.ablations --config=configs/ablation_cpu.py --workdir=/tmp/ablation

Five trainings (GBM with the three M-DSM weightings, VE, VP) of the demo U-Net for the same number of
steps, eleven sampled rows, and FID/KID against network evaluations for five samplers. Sized for 2
CPU cores (at most 40 minutes); the table it wrote is docs/ablation_cpu.md. For accelerators, see
configs/ablation_mnist.py.
"""

from ml_collections import ConfigDict

from dale_langevin.config import default_config


def get_config():
    """Demo network and optimizer, a short equal budget per training, 100-level samplers."""
    c = default_config()
    c.data.dataset = "embedded_mnist"
    c.model.channels = 32
    c.model.channel_mult = (1, 2, 2)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = ()
    c.model.dropout = 0.0
    c.training.batch_size = 64
    c.training.n_iters = 250
    c.training.log_every = 50
    c.training.ckpt_every = 250
    c.training.keep_checkpoints = 1
    c.training.sample_every = 0
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 50
    c.ema.decay = 0.99
    c.sampling.n_steps = 100
    c.sampling.denoise_steps = 10  # the demo's noise-free final updates ("extras on")
    c.sampling.ode_t_end = 1e-3
    c.sampling.batch_size = 100
    c.eval.classifier_epochs = 3

    c.ablation = ConfigDict()
    c.ablation.rows = "all"  # comma-separated names from dale_langevin.ablations.ROW_NAMES, or all
    c.ablation.curves = "gbm_dale_langevin,gbm_sign_agnostic,ve_euler_maruyama,vp_euler_maruyama,gbm_ode"
    c.ablation.nfe_steps = (10, 30)  # extra sampler levels for the curves (besides sampling.n_steps)
    c.ablation.n_samples = 200
    return c
