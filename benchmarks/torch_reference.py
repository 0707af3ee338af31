"""PyTorch reference of ``dale_langevin.nets.unet.ScoreUNet`` for the CPU speed comparison (benchmark only).

PyTorch is NOT a dependency of the package: this script runs in a private environment, e.g.

    python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
    /tmp/torchvenv/bin/python benchmarks/torch_reference.py --config=demo --batch=128,64 \
        --steps=10 --expect_params=1045729 --out=torch.json

It imports only torch, numpy and the standard library (not the package, not jax), so the model
settings of ``configs/demo.py`` and ``configs/mnist.py`` (on top of ``dale_langevin/pipeline/config.py``
defaults) are copied into ``CONFIGS`` below; keep them in step with those files. The network
mirrors the Flax one layer by layer: the same convolutions, GroupNorms (``gcd(C, 32)`` groups, eps
1e-6), SiLU, sinusoidal embedding of the noise level (scale 100) through two Dense layers of width
``4 * channels``, residual blocks with the embedding added after the first convolution, single-head
self-attention at ``attn_resolutions``, strided-convolution downsampling, nearest upsampling plus a
convolution, and zero-initialised last convolutions (stride-2 convolutions pad 0 before and 1 after,
as Flax's ``SAME`` does); ``--expect_params`` checks the parameter count against the Flax model's.
The one deliberate difference is the layout: NCHW (PyTorch's default; ``--channels_last`` switches).
Given the same weights, the output matches the Flax model's to float32 rounding.

What is timed (``torch.set_num_threads(--threads)``, warm-up steps excluded, median over steps):
  * train step at each ``--batch``: forward in train mode (dropout on), loss
    ``mean_B sum_pixels (net(x, level) - target)**2`` against a random target, backward, global
    grad-norm clip (``--grad_clip``), Adam with the linear warm-up schedule of
    ``dale_langevin.pipeline.state.make_optimizer``, and an EMA update of every parameter with the warm-up
    decay ``min(decay, (1 + n) / (10 + n))`` -- the same work as the JAX train step;
  * forward only at ``--forward_batch`` under ``torch.inference_mode`` (one sampler network
    evaluation).
Inputs are random and drawn before the timed loop. The JSON written to ``--out`` holds medians,
every step time (wall, and process CPU time), images/s, threads, torch version, parameter count and ``os.getloadavg()`` at start
and end (the machine may be shared: compare against JAX medians measured in the same session).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Model and optimiser settings, copied from configs/*.py over dale_langevin/pipeline/config.py defaults.
_DEFAULT = {
    "channels": 64,
    "channel_mult": (1, 2, 2),
    "num_res_blocks": 2,
    "attn_resolutions": (7,),
    "dropout": 0.1,
    "image_shape": (28, 28, 1),
    "lr": 1e-4,
    "warmup_steps": 5_000,
    "beta1": 0.9,
    "beta2": 0.999,
    "eps": 1e-8,
    "grad_clip": 1.0,
    "ema_decay": 0.999,
    "ema_warmup": True,
}
CONFIGS = {
    "demo": {
        **_DEFAULT,
        "channels": 32,
        "channel_mult": (1, 2, 2),
        "num_res_blocks": 1,
        "attn_resolutions": (),
        "dropout": 0.0,
        "lr": 2e-3,
        "warmup_steps": 100,
        "ema_decay": 0.995,
    },
    "mnist": dict(_DEFAULT),
}
# Flax parameter counts (dale_langevin.pipeline.config.make_model(cfg) + model.init on a 28x28x1 input).
FLAX_PARAMS = {"demo": 1_045_729, "mnist": 6_469_889}


def _groups(channels: int, max_groups: int = 32) -> int:
    return math.gcd(channels, max_groups) if channels >= 8 else 1


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels), channels, eps=1e-6)  # flax.linen.GroupNorm's epsilon


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1, zero: bool = False) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2 if stride == 1 else 0)
    if zero:  # Flax: kernel_init=zeros (bias is zeros by default there too)
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    return conv


def sinusoidal_embedding(level: torch.Tensor, dim: int, scale: float = 100.0, max_period: float = 1e4) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=level.device) / half)
    args = scale * level[:, None].float() * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), _conv(cin, cout)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2, self.drop, self.conv2 = _norm(cout), nn.Dropout(dropout), _conv(cout, cout, zero=True)
        self.skip = _conv(cin, cout, k=1) if cin != cout else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return (self.skip(x) if self.skip is not None else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over positions (flax SelfAttention: q, k, v, out Dense with biases)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        h = self.out(F.scaled_dot_product_attention(q, k, v))
        return x + h.transpose(1, 2).reshape(b, c, hgt, wid)


class ScoreUNet(nn.Module):
    """Layer-by-layer mirror of the Flax ``ScoreUNet`` (NCHW): ``(B, C, H, W), (B,) -> (B, C, H, W)``."""

    def __init__(
        self,
        channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attn_resolutions=(),
        dropout=0.0,
        image_shape=(28, 28, 1),
    ):
        super().__init__()
        self.channels, self.channel_mult, self.num_res_blocks = channels, tuple(channel_mult), num_res_blocks
        emb_dim = 4 * channels
        self.emb1, self.emb2 = nn.Linear(channels, emb_dim), nn.Linear(emb_dim, emb_dim)
        size, in_ch = image_shape[0], image_shape[-1]
        attn = lambda c, s: AttnBlock(c) if s in attn_resolutions else nn.Identity()
        block = lambda cin, cout: ResBlock(cin, cout, emb_dim, dropout)

        self.conv_in = _conv(in_ch, channels)
        skip_ch, ch = [channels], channels
        self.down = nn.ModuleList()  # per level: (res, attn) pairs, then a stride-2 conv or None
        for i, mult in enumerate(self.channel_mult):
            layers = nn.ModuleList()
            for _ in range(num_res_blocks):
                layers.append(nn.ModuleList([block(ch, channels * mult), attn(channels * mult, size)]))
                ch = channels * mult
                skip_ch.append(ch)
            downsample = None
            if i < len(self.channel_mult) - 1:
                downsample = _conv(ch, ch, stride=2)
                skip_ch.append(ch)
                size //= 2
            self.down.append(nn.ModuleList([layers, downsample if downsample is not None else nn.Identity()]))

        self.mid1, self.mid_attn, self.mid2 = block(ch, ch), attn(ch, size), block(ch, ch)

        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(self.channel_mult))):
            layers = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                layers.append(nn.ModuleList([block(ch + skip_ch.pop(), channels * mult), attn(channels * mult, size)]))
                ch = channels * mult
            upsample = nn.Identity()
            if i > 0:
                upsample = _conv(ch, ch)
                size *= 2
            self.up.append(nn.ModuleList([layers, upsample]))
        assert not skip_ch

        self.norm_out, self.conv_out = _norm(ch), _conv(ch, in_ch, zero=True)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        emb = self.emb1(sinusoidal_embedding(noise_level, self.channels))
        emb = self.emb2(F.silu(emb))
        h = self.conv_in(x)
        skips = [h]
        for i, (layers, downsample) in enumerate(self.down):
            for res, attn in layers:
                h = attn(res(h, emb))
                skips.append(h)
            if i < len(self.down) - 1:
                h = downsample(F.pad(h, (0, 1, 0, 1)))  # Flax SAME, stride 2, even size: pad 0 before, 1 after
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for j, (layers, upsample) in enumerate(self.up):
            for res, attn in layers:
                h = attn(res(torch.cat([h, skips.pop()], dim=1), emb))
            if j < len(self.up) - 1:
                h = upsample(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h))).float()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _summary(times: list[float], cpu: list[float], batch: int) -> dict:
    med = statistics.median(times)
    return {
        "batch": batch,
        "median_s": med,
        "min_s": min(times),
        "max_s": max(times),
        "images_per_s": batch / med,
        "step_times_s": times,
        "median_cpu_s": statistics.median(cpu),
        "step_cpu_s": cpu,
    }


def time_train(model: nn.Module, cfg: dict, batch: int, steps: int, warmup: int, channels_last: bool) -> dict:
    """Median seconds of a full train step (forward, loss, backward, clip, Adam, EMA) at ``batch``."""
    h, w, c = cfg["image_shape"]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, c, h, w, generator=g).contiguous(memory_format=fmt)
    target = torch.randn(batch, c, h, w, generator=g).contiguous(memory_format=fmt)
    level = torch.empty(batch).uniform_(-2.0, 1.0, generator=g)  # log std_t spans a few units

    model.train()
    params = [p for p in model.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"])
    warm = cfg["warmup_steps"]
    # dale_langevin.pipeline.state.make_optimizer: lr * min(1, (n + 1) / warmup_steps), n = updates done so far.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: min(1.0, (n + 1) / warm) if warm > 1 else 1.0)

    def step(n: int) -> float:
        opt.zero_grad(set_to_none=True)
        out = model(x, level)
        loss = ((out - target) ** 2).flatten(1).sum(1).mean()
        loss.backward()
        if cfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"], foreach=True)
        opt.step()
        sched.step()
        decay = min(cfg["ema_decay"], (1 + n) / (10 + n)) if cfg["ema_warmup"] else cfg["ema_decay"]
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
        return loss.item()

    times, cpu = [], []
    for n in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step(n)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if not math.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss} at step {n}")
        if n >= warmup:
            times.append(dt)
            cpu.append(dc)
    return _summary(times, cpu, batch)


def time_forward(model: nn.Module, cfg: dict, batch: int, steps: int, warmup: int, channels_last: bool) -> dict:
    """Median seconds of one network evaluation (eval mode, inference_mode) at ``batch``."""
    h, w, c = cfg["image_shape"]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(1000 + batch)
    x = torch.randn(batch, c, h, w, generator=g).contiguous(memory_format=fmt)
    level = torch.empty(batch).uniform_(-2.0, 1.0, generator=g)
    model.eval()
    times, cpu = [], []
    with torch.inference_mode():
        for n in range(warmup + steps):
            t0, c0 = time.perf_counter(), time.process_time()
            out = model(x, level)
            float(out[0, 0, 0, 0])  # make sure the work is done
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if n >= warmup:
                times.append(dt)
                cpu.append(dc)
    return _summary(times, cpu, batch)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="demo")
    p.add_argument("--batch", default="128", help="train-step batch size(s), comma-separated, e.g. 128,64; 0 skips")
    p.add_argument("--forward_batch", type=int, default=64, help="forward-only batch size; 0 skips")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each measurement")
    p.add_argument("--forward_steps", type=int, default=0, help="timed forward steps (0: same as --steps)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--channels_last", action="store_true", help="NHWC memory format (default NCHW)")
    p.add_argument(
        "--expect_params", type=int, default=None, help="fail unless the parameter count equals this (the Flax model's)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON output path")
    args = p.parse_args(argv)

    load_start = os.getloadavg()
    t_start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = CONFIGS[args.config]
    model_kw = {
        k: cfg[k] for k in ("channels", "channel_mult", "num_res_blocks", "attn_resolutions", "dropout", "image_shape")
    }
    model = ScoreUNet(**model_kw)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    count = n_params(model)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, config {args.config}: "
        f"{count:,} parameters (Flax: {FLAX_PARAMS[args.config]:,})",
        flush=True,
    )
    if args.expect_params is not None and count != args.expect_params:
        print(f"ERROR: parameter count {count} != expected {args.expect_params}", file=sys.stderr)
        return 1

    result = {
        "config": args.config,
        "model": model_kw,
        "params": count,
        "flax_params_recorded": FLAX_PARAMS[args.config],
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "parallel_info": torch.__config__.parallel_info(),
        "channels_last": args.channels_last,
        "steps": args.steps,
        "warmup": args.warmup,
        "loadavg_start": list(load_start),
        "train": {},
        "forward": {},
    }
    batches = [int(b) for b in str(args.batch).split(",") if b.strip() and int(b) > 0]
    for b in batches:
        model_b = ScoreUNet(**model_kw)  # fresh parameters and optimiser per batch size
        if args.channels_last:
            model_b = model_b.to(memory_format=torch.channels_last)
        r = time_train(model_b, cfg, b, args.steps, args.warmup, args.channels_last)
        result["train"][str(b)] = r
        print(
            f"train  batch {b:4d}: median {r['median_s']:.3f} s/step  ({r['images_per_s']:.1f} img/s)  "
            f"min {r['min_s']:.3f}  max {r['max_s']:.3f}  cpu {r['median_cpu_s']:.2f} s",
            flush=True,
        )
    if args.forward_batch > 0:
        r = time_forward(
            model, cfg, args.forward_batch, args.forward_steps or args.steps, args.warmup, args.channels_last
        )
        result["forward"][str(args.forward_batch)] = r
        print(
            f"forward batch {args.forward_batch:4d}: median {r['median_s']:.3f} s  "
            f"({r['images_per_s']:.1f} img/s)  min {r['min_s']:.3f}  max {r['max_s']:.3f}  cpu {r['median_cpu_s']:.2f} s",
            flush=True,
        )
    result["loadavg_end"] = list(os.getloadavg())
    result["wall_s"] = time.time() - t_start
    print(
        f"load average start {tuple(round(v, 2) for v in load_start)}, "
        f"end {tuple(round(v, 2) for v in result['loadavg_end'])}",
        flush=True,
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
