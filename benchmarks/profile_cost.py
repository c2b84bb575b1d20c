"""Cost of group-aware profiling relative to one plain forward + backward pass.

    .venv/bin/python benchmarks/profile_cost.py [--run runs/bench] [--calib 1024] [--repeats 5]

For G = 2 (skin types I-III vs IV-VI, merged from the dataset's six groups by a view of the
dataset with remapped group labels) and G = 6 (the six skin types), channel granularity: the wall
time of ``fqopt.profile`` (everything included: MAC count, batching, quantization errors, cost
reduction, data loading) divided by the wall time of one plain pass over the same calibration
samples (data loading, forward, mean cross-entropy, ``loss.backward()`` for every parameter, at the
same batch size, in eval mode). Timings are interleaved (plain, G=2, G=6, plain, ...) so that load
from other processes hits all of them alike; the ratio is of the medians. Goal: <= 1.3.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from fqopt.data._base import FairDataset
from fqopt.profiling import profile, select_calibration
from fqopt.runs import Run


class MergedGroups(FairDataset):
    """A view of ``base`` whose group labels are mapped through ``mapping`` (old -> new)."""

    def __init__(self, base: FairDataset, mapping: list[int], names: list[str]):
        super().__init__(name=base.name, class_names=base.class_names, group_names=names,
                         labels=base.labels, groups=np.asarray(mapping)[base.groups],
                         image_size=base.image_size, attribute=base.attribute,
                         splits=base.splits, info=base.info)
        self.base = base
        self.mean, self.std = base.mean, base.std

    def load_images(self, indices):
        return self.base.load_images(indices)


def plain_pass(model, ds, idx, batch_size):
    """One forward + backward over ``idx`` (shuffled once, fixed batches), all parameters."""
    for p in model.parameters():
        p.requires_grad_(True)
    # timm's TinyViT caches its attention biases in eval mode; with every parameter requiring
    # grad the cached tensor carries the first batch's graph, and the second backward fails
    # ("backward through the graph a second time"). Training would not cache: drop the cache.
    caches = [m for m in model.modules() if isinstance(getattr(m, "attention_bias_cache", None),
                                                        dict)]
    for start in range(0, len(idx), batch_size):
        x, y, _ = ds.get_batch(idx[start:start + batch_size])
        for m in caches:
            m.attention_bias_cache = {}
        loss = F.cross_entropy(model(x), y)
        model.zero_grad(set_to_none=True)
        loss.backward()
    model.zero_grad(set_to_none=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/bench")
    ap.add_argument("--calib", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--methods", default="fisher",
                    help="comma list; the goal is for fisher, others are reported for context")
    ap.add_argument("--granularity", default="channel")
    ap.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's]")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    run = Run.open(args.run)
    model = run.model()
    ds6 = run.dataset()
    ds2 = MergedGroups(ds6, [0, 0, 0, 1, 1, 1], ["I-III", "IV-VI"])
    idx = select_calibration(ds6.groups, ds6.split("train"), args.calib, seed=0)
    plain_order = idx[np.random.default_rng(0).permutation(len(idx))]
    methods = args.methods.split(",")
    print(f"run {args.run}: {run.model_name}, {ds6.name} {ds6.image_size}px, calib "
          f"{len(idx)} samples, batch {args.batch_size}, {args.granularity} granularity, "
          f"torch threads {torch.get_num_threads()}")

    def timed(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    jobs = {"plain": lambda: plain_pass(model, ds6, plain_order, args.batch_size)}
    for m in methods:
        for G, ds in ((2, ds2), (6, ds6)):
            jobs[f"{m} G={G}"] = (lambda m=m, ds=ds: profile(
                model, ds, idx, method=m, granularity=args.granularity,
                batch_size=args.batch_size, seed=0))
    for fn in jobs.values():   # warm-up (allocator, thread pool, oneDNN primitives)
        fn()
    times = {k: [] for k in jobs}
    for _ in range(args.repeats):
        for k, fn in jobs.items():
            times[k].append(timed(fn))
    base, fastest = statistics.median(times["plain"]), min(times["plain"])
    print(f"\n{'job':<16}{'median s':>10}{'min s':>8}{'ratio':>8}{'min ratio':>11}"
          f"{'paired':>8}   (repeats: {args.repeats})")
    for k, ts in times.items():
        med = statistics.median(ts)
        # paired: median over rounds of (this job / the plain pass of the same round)
        paired = statistics.median(t / p for t, p in zip(ts, times["plain"]))
        print(f"{k:<16}{med:>10.3f}{min(ts):>8.3f}{med / base:>8.3f}{min(ts) / fastest:>11.3f}"
              f"{paired:>8.3f}")
    print("ratio: median / median of plain; min ratio: fastest / fastest plain; "
          "paired: median of per-round ratios")


if __name__ == "__main__":
    main()
