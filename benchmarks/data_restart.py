"""What a restart costs the data stream: the first batch at step ``k`` for several ``k``, and the read rate.

    python -m benchmarks.data_restart --out=restart.json                      # embedded digits
    python -m benchmarks.data_restart --data_dir=/tmp/tfds60k --make_mnist_sized --out=restart.json

For each ``start`` in ``--starts``: the time from :func:`dale_langevin.pipeline.data.train_batches`
(``start=k``) to its first batch, median of ``--repeats`` (the first call, which opens the files,
is timed apart as ``cold_s``). Then ``--read_batches`` batches in a row: batches per second.
``--make_mnist_sized`` first writes the embedded train digits 14 times over (63,000 examples, the
size of MNIST's train split) as a prepared TFDS ``mnist`` in ``--data_dir`` (needs TensorFlow).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def first_batch_seconds(kwargs: dict, start: int) -> float:
    from dale_langevin.pipeline import data

    t = time.perf_counter()
    next(data.train_batches(start=start, **kwargs))
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=None, help="a prepared TFDS directory (default: the embedded digits)")
    p.add_argument("--dataset", default=None, help="default: mnist with --data_dir, else embedded_mnist")
    p.add_argument("--make_mnist_sized", action="store_true", help="write a 63,000-example TFDS mnist first")
    p.add_argument("--batch", type=int, default=128, help="global batch (the published 128)")
    p.add_argument("--starts", default="100,100000,1000000", help="comma-separated restart steps")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--read_batches", type=int, default=200)
    p.add_argument("--read_threads", type=int, default=4)
    p.add_argument("--out", default=None, help="write the report as JSON here")
    a = p.parse_args(argv)
    from dale_langevin.pipeline import data

    dataset = a.dataset or ("mnist" if a.data_dir else "embedded_mnist")
    if a.make_mnist_sized:
        if not a.data_dir:
            p.error("--make_mnist_sized needs --data_dir")
        t = time.perf_counter()
        data.write_embedded_as_tfds(a.data_dir, dataset, train_copies=14)
        print(f"wrote 63,000 train examples to {a.data_dir} in {time.perf_counter() - t:.1f} s", flush=True)
    kwargs = dict(
        name=dataset,
        global_batch=a.batch,
        encode=lambda u: u + 1.0,
        data_dir=a.data_dir,
        download=False,
        read_threads=a.read_threads,
    )
    starts = [int(s) for s in a.starts.split(",")]
    cold = first_batch_seconds(kwargs, 0)
    restarts = {}
    for k in starts:
        times = [first_batch_seconds(kwargs, k) for _ in range(a.repeats)]
        restarts[str(k)] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}
        print(f"start {k:>12,}: first batch in {restarts[str(k)]['median_s'] * 1e3:8.1f} ms (median of {a.repeats})")
    it = data.train_batches(start=0, **kwargs)
    next(it)
    t = time.perf_counter()
    for _ in range(a.read_batches):
        next(it)
    rate = a.read_batches / (time.perf_counter() - t)
    print(f"steady: {rate:.1f} batches/s ({rate * a.batch:,.0f} examples/s), {a.read_threads} read thread(s)")
    report = {
        "dataset": dataset,
        "data_dir": a.data_dir,
        "examples": len(data.train_source(dataset, data_dir=a.data_dir, download=False)),
        "global_batch": a.batch,
        "cold_s": cold,
        "restart": restarts,
        "batches_per_s": rate,
        "read_threads": a.read_threads,
    }
    if a.out:
        with open(a.out, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
