"""CIFAR-10 (the paper used NCSN++; this is the config's U-Net, wider and with attention at 16x16).

python -m dale_langevin.main --config=configs/cifar10.py --workdir=gs://BUCKET/runs/cifar10
"""

from dale_langevin.pipeline.config import default_config


def get_config():
    """CIFAR-10: 32x32x3."""
    c = default_config()
    c.data.dataset = "cifar10"
    c.model.unet.channels = 128
    c.model.unet.channel_mult = (1, 2, 2, 2)
    c.model.unet.attn_resolutions = (16,)
    c.model.unet.dropout = 0.1
    c.training.n_iters = 300_000
    return c
