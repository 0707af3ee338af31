"""Networks: the time-conditional U-Net noise predictor (:mod:`~dale_langevin.nets.unet`)."""

from dale_langevin.nets.unet import ScoreUNet

__all__ = ["ScoreUNet"]
