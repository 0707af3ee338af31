"""Distil the CPU demo-recipe model into a 4-step multiplicative student (``--mode=distill``), on 2 CPU cores.

    python -m dale_langevin.main --mode=distill --config=configs/distill_cpu.py \\
      --config.distill.teacher_workdir=TEACHER --workdir=STUDENT

``TEACHER`` is a run trained with ``configs/demo.py`` (or the ``gbm`` training of ``configs/ablation_cpu.py``,
the same recipe). The student starts from the teacher's EMA weights and learns by distribution matching
(:mod:`dale_langevin.distillation`), with an online fake-score network of the same size. It is sampled by
``renoise`` at 4 times evenly spaced in noise std (0.8, 0.6, 0.4, 0.2); ``--config.sampling.renoise.n_steps=2``
or ``=1`` draw from the same student at 2 or 1 network evaluations (their times are among its own).
``--mode=sample`` and ``--mode=eval`` with this config and ``--workdir=STUDENT`` draw from the student.
The CPU cost and the measured FIDs are in docs/fast_samplers.md.
"""

import os

from dale_langevin.pipeline.config import load_config_file


def get_config():
    """The demo's network and prior; a 4-step student by DMD, batch 32, 600 steps, 4 fake-score updates per step."""
    c = load_config_file(os.path.join(os.path.dirname(__file__), "demo.py"))  # configs/ is loaded by path
    c.sampling.method = "renoise"
    c.sampling.batch_size = 100  # the ablation's: benchmarks.nfe_table then draws the same starts as for the teacher
    c.sampling.renoise.n_steps = 4
    c.sampling.renoise.rho = 1.0  # times evenly spaced in std: the 1- and 2-step times are among the 4
    c.distill.n_iters = 600  # 19 min on 2 idle cores, 37 shared with a sampling job (docs/fast_samplers.md)
    c.distill.batch_size = 32
    c.distill.lr = 5e-5
    c.distill.fake_lr = 1e-4
    c.distill.fake_updates = 4  # with 1, FID at 4 NFE went 35 -> 45 from step 600 to 1000 (the fake score lags)
    c.distill.log_every = 25
    c.distill.ckpt_every = 100
    c.distill.sample_every = 100
    return c
