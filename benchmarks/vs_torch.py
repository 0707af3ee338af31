"""PyTorch against JAX on the same machine, alternated: ``python -m benchmarks.vs_torch --torch_python=...``.

On a shared CPU, absolute times drift by tens of percent from one minute to the next, so one
PyTorch run and one JAX run taken minutes apart do not make a ratio. This driver alternates them:
each round runs ``benchmarks/torch_reference.py`` (in its own interpreter, PyTorch is not a
dependency) and then ``benchmarks.run`` with that round's PyTorch JSON beside it, and reports
every round's ratios and their medians. Ratios > 1 mean JAX is faster.

Writes ``--out_dir/torch_<r>.json``, ``jax_<r>.json`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchmarks.run import ROOT

# Parameter counts the PyTorch mirror must reproduce (its --expect_params check).
EXPECT_PARAMS = {"demo": 1_045_729, "mnist": 6_469_889}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags (see ``--help``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--torch_python", required=True, help="interpreter with torch installed (see benchmarks/README.md)")
    p.add_argument("--config", default="demo", choices=sorted(EXPECT_PARAMS))
    p.add_argument("--rounds", type=int, default=3, help="PyTorch + JAX pairs")
    p.add_argument("--batch", type=int, default=128, help="train batch of both")
    p.add_argument("--forward_batch", type=int, default=64, help="PyTorch forward batch = JAX sampler batch")
    p.add_argument("--steps", type=int, default=8, help="timed train steps per run")
    p.add_argument("--nfe", type=int, default=20, help="JAX sampler evaluations per timed call")
    p.add_argument("--out_dir", required=True)
    args = p.parse_args(argv)
    if min(args.rounds, args.batch, args.forward_batch, args.steps, args.nfe) < 1:
        p.error("--rounds, --batch, --forward_batch, --steps and --nfe must be >= 1")
    return args


def round_ratios(jax_report: dict, config: str, batch: int, forward_batch: int) -> dict:
    """One round's figures from a ``benchmarks.run`` JSON that was given the round's PyTorch JSON.

    Returns seconds for both sides and ``train_torch_over_jax`` (train step at ``batch``) and
    ``forward_torch_over_jax`` (PyTorch forward pass against one JAX sampler evaluation at
    ``forward_batch``); > 1 means JAX is faster.
    """
    side = jax_report["configs"][config].get("torch")
    if side is None:
        raise ValueError(f"the JAX report has no PyTorch side for {config!r}: was --torch_json given?")
    train, forward = side["train"].get(str(batch), {}), side["forward"].get(str(forward_batch), {})
    if "torch_over_jax_lean" not in train or "torch_over_jax_lean" not in forward:
        raise ValueError(
            f"no matching batch: PyTorch train {sorted(side['train'])}, forward {sorted(side['forward'])}; "
            f"JAX train {batch}, sampler {forward_batch}"
        )
    return dict(
        torch_train_s=train["torch_median_s"],
        jax_train_s=train["jax_lean_s"],
        train_torch_over_jax=train["torch_over_jax_lean"],
        torch_forward_s=forward["torch_median_s"],
        jax_s_per_nfe=forward["jax_lean_s_per_nfe"],
        forward_torch_over_jax=forward["torch_over_jax_lean"],
    )


def summarise(rounds: list[dict]) -> dict:
    """Medians over rounds of every figure in :func:`round_ratios`, plus the rounds themselves."""
    return dict(rounds=rounds, medians={k: statistics.median(r[k] for r in rounds) for k in rounds[0]})


def main(argv: list[str] | None = None) -> dict:
    """Runs the rounds, prints each one and the medians, writes the JSON files; returns the summary."""
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    rounds = []
    for r in range(1, args.rounds + 1):
        torch_json, jax_json = (os.path.join(args.out_dir, f"{side}_{r}.json") for side in ("torch", "jax"))
        subprocess.run(
            [
                args.torch_python,
                str(ROOT / "benchmarks" / "torch_reference.py"),
                f"--config={args.config}",
                f"--batch={args.batch}",
                f"--forward_batch={args.forward_batch}",
                f"--steps={args.steps}",
                f"--expect_params={EXPECT_PARAMS[args.config]}",
                f"--out={torch_json}",
            ],
            check=True,
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.run",
                f"--configs={args.config}",
                f"--batch={args.batch}",
                f"--steps={args.steps}",
                f"--nfe={args.nfe}",
                f"--sample_batch={args.forward_batch}",
                "--sample_repeats=2",
                "--cpu_conv_variants=",
                f"--torch_json={torch_json}",
                f"--out={jax_json}",
            ],
            check=True,
            cwd=ROOT,
        )
        with open(jax_json) as f:
            rounds.append(round_ratios(json.load(f), args.config, args.batch, args.forward_batch))
        x = rounds[-1]
        print(
            f"round {r}: train torch {x['torch_train_s']:.3f} / jax {x['jax_train_s']:.3f} s = "
            f"{x['train_torch_over_jax']:.2f}x; forward torch {x['torch_forward_s']:.3f} / jax "
            f"{x['jax_s_per_nfe']:.3f} s = {x['forward_torch_over_jax']:.2f}x",
            flush=True,
        )
    summary = summarise(rounds)
    m = summary["medians"]
    print(
        f"median over {len(rounds)} rounds: train {m['train_torch_over_jax']:.2f}x, forward "
        f"{m['forward_torch_over_jax']:.2f}x (> 1: JAX faster)",
        flush=True,
    )
    with open(os.path.join(args.out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    main()
