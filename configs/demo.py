"""The embedded default: real MNIST digits shipped with the package, sized for 2 CPU cores, no network.

    python -m dale_langevin.main --config=configs/demo.py --workdir=/tmp/dale_demo

Trains a 1.05M-parameter U-Net for 1,200 steps of batch 64 (pmap over one forced host device per
core), then samples a 64-image grid with the Dale-Langevin sampler at 200 levels plus 10 noise-free
final updates (210 network evaluations) from a per-pixel log-normal prior; 13 to 17 minutes on
2 CPU cores (docs/results.md). The learning rate is far above the published 1e-4 because the
budget is ~1k steps, not 300k; the EMA warm-up keeps early averages from being the initialisation.
"""

from dale_langevin.pipeline.config import default_config


def get_config():
    """Demo: embedded MNIST, small U-Net, short schedule."""
    c = default_config()
    c.data.dataset = "embedded_mnist"
    c.model.unet.channels = 32
    c.model.unet.channel_mult = (1, 2, 2)
    c.model.unet.num_res_blocks = 1
    c.model.unet.attn_resolutions = ()
    c.model.unet.dropout = 0.0
    c.training.batch_size = 64
    c.training.n_iters = 1_200
    c.training.log_every = 50
    c.training.ckpt_every = 400
    c.training.sample_every = 0
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 100
    c.ema.decay = 0.995
    for method in ("dale_langevin", "sign_agnostic"):  # the same levels for either multiplicative SDE sampler
        c.sampling[method].n_steps = 200
        c.sampling[method].denoise_steps = 10  # noise-free final updates: removes the last steps' speckle
    return c
