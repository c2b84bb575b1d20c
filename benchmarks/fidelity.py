"""Fidelity of the sensitivity tables: predicted vs measured per-group loss rise.

    .venv/bin/python benchmarks/fidelity.py [--run runs/bench] [--plans 60] [--calib 1024]

Profiles the run's FP model at layer granularity with every method (calibration: up to
``--calib`` train samples, stratified by group), draws ``--plans`` random layer-granularity plans
whose parameter-weighted average bits spread evenly over [2.5, 6] (bits 2/3/4/6/8; stem and head
pinned at 8 as the solvers do, or every layer free with ``--pin none``), measures every group's
mean cross-entropy rise on the held-out **search** split under each plan (fake quantization in
place), and reports per group the Spearman rank correlation between the predicted
``C_g = Σ_u costs[u, g, x_u]`` and the measured rise. Goal: >= 0.9 for ``fisher``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from scipy.stats import spearmanr

from fqopt.apply import quantized
from fqopt.evaluation import predict
from fqopt.plan import AllocationPlan
from fqopt.profiling import profile
from fqopt.runs import Run
from fqopt.units import discover_units

CANDIDATES = np.array([2, 3, 4, 6, 8])
# label -> (method, profile() options overriding the command line's)
VARIANTS = {
    "fisher": ("fisher", {}),
    "fisher+1st": ("fisher", {"first_order": True}),
    "hutchinson": ("hutchinson", {}),
    "hutchinson+1st": ("hutchinson", {"first_order": True}),
    "gradient": ("gradient", {}),
    "grape": ("grape", {}),
    "measured": ("measured", {}),
    # estimator studies (not in the default list)
    "fisher-bs16": ("fisher", {"batch_size": 16}),
    "fisher-bs1": ("fisher", {"batch_size": 1}),
    "fisher-calib-all": ("fisher", {"calib": None}),
    "hutchinson-p4": ("hutchinson", {"hutchinson_probes": 4}),
}
DEFAULT_VARIANTS = ("fisher", "fisher+1st", "hutchinson", "hutchinson+1st", "gradient", "grape",
                    "measured")


def random_plans(units, n, seed, lo=2.5, hi=6.0):
    """``n`` random ``[U]`` bit vectors whose parameter-weighted averages spread evenly over
    [lo, hi]: random bits (a random mix of the candidates), then random single-layer steps
    towards the target average until it is within 0.15 bits of it."""
    rng = np.random.default_rng(seed)
    free = np.flatnonzero([name not in units.pinned for name in units.names])
    sizes = units.sizes.astype(float)
    plans = []
    for target in np.linspace(lo + 0.05, hi - 0.05, n):
        level = np.array([CANDIDATES.tolist().index(units.pinned.get(name, 8))
                          for name in units.names])
        p = rng.dirichlet(np.ones(len(CANDIDATES)))
        level[free] = rng.choice(len(CANDIDATES), size=len(free), p=p)
        for _ in range(10000):
            avg = float((CANDIDATES[level] * sizes).sum() / sizes.sum())
            if abs(avg - target) < 0.15:
                break
            step = -1 if avg > target else 1
            movable = free[(level[free] + step >= 0) & (level[free] + step < len(CANDIDATES))]
            level[rng.choice(movable)] += step
        avg = float((CANDIDATES[level] * sizes).sum() / sizes.sum())
        if lo <= avg <= hi:
            plans.append(CANDIDATES[level].copy())
    return plans


def group_losses(model, ds, idx):
    pred = predict(model, ds, idx, batch_size=512)
    return np.array([pred["loss"][pred["groups"] == g].mean() for g in range(ds.num_groups)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/bench")
    ap.add_argument("--plans", type=int, default=60)
    ap.add_argument("--calib", type=int, default=1024)
    ap.add_argument("--pin", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=",".join(DEFAULT_VARIANTS),
                    help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--split", default="search",
                    help="held-out split(s) the loss rises are measured on, e.g. search+test")
    ap.add_argument("--rises", default=None,
                    help="cache of the measured loss rises (.npz): reused when its plans match")
    ap.add_argument("--batch-size", type=int, default=64, help="profiling batch size")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    run = Run.open(args.run)
    model = run.model()
    ds = run.dataset()
    search = np.concatenate([ds.split(s) for s in args.split.split("+")])
    units = discover_units(model, "layer", pin=args.pin)
    plans = random_plans(units, args.plans, args.seed)
    avgs = [float((b * units.sizes).sum() / units.sizes.sum()) for b in plans]
    print(f"run {args.run}: {run.model_name}, {len(units)} layers, {len(plans)} random plans, "
          f"avg bits {min(avgs):.2f}-{max(avgs):.2f}, pins {units.pinned or 'none'}, "
          f"{args.split} split {len(search)} samples, calib {args.calib} train samples")

    t0 = time.perf_counter()
    rises = None
    if args.rises and os.path.exists(args.rises):
        with np.load(args.rises) as z:
            if z["plans"].shape == np.shape(plans) and np.array_equal(z["plans"], plans):
                rises = z["rises"]
    if rises is None:
        base = group_losses(model, ds, search)
        rises = []
        for bits in plans:
            plan = AllocationPlan.from_unit_bits(units, bits, model=run.model_name)
            with quantized(model, plan, units=units):
                rises.append(group_losses(model, ds, search) - base)
        rises = np.array(rises)                                     # [plans, G]
        if args.rises:
            np.savez(args.rises, plans=np.array(plans), rises=rises)
    print(f"measured {len(plans)} plans in {time.perf_counter() - t0:.1f} s; loss rise "
          f"range {rises.min():.4f} .. {rises.max():.4f}")

    wanted = args.methods.split(",")
    rows, out = [], {}
    unknown = [w for w in wanted if w not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    for label in wanted:
        method, opts = VARIANTS[label]
        kwargs = dict(calib=args.calib, pin=args.pin, seed=args.seed,
                      batch_size=args.batch_size)
        kwargs.update(opts)
        t0 = time.perf_counter()
        table = profile(model, ds, ds.split("train"), method=method, granularity="layer",
                        **kwargs)
        secs = time.perf_counter() - t0
        k_of = {int(b): k for k, b in enumerate(table.bits)}
        pred = np.array([[table.costs[np.arange(len(bits)), g, [k_of[int(b)] for b in bits]]
                          .sum() for g in range(table.num_groups)] for bits in plans])
        rho = [float(spearmanr(pred[:, g], rises[:, g])[0]) for g in range(table.num_groups)]
        # does the table also rank the groups (which group a plan hurts most)?
        worst_hit = float(np.mean(pred.argmax(1) == rises.argmax(1)))
        rows.append((label, rho, secs, worst_hit))
        out[label] = {"spearman": dict(zip(ds.group_names, rho)), "seconds": secs,
                      "worst_group_agreement": worst_hit}

    head = "".join(f"{g:>7}" for g in ds.group_names)
    print(f"\nSpearman(predicted C_g, measured loss rise of g) over {len(plans)} plans\n"
          f"{'method':<16}{head}{'min':>7}{'mean':>7}{'argmax':>8}{'secs':>8}")
    for label, rho, secs, hit in rows:
        cells = "".join(f"{r:>7.3f}" for r in rho)
        print(f"{label:<16}{cells}{min(rho):>7.3f}{np.mean(rho):>7.3f}{hit:>8.2f}{secs:>8.1f}")
    print("argmax: share of plans where the table's most-hurt group is the measured one")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"plans": len(plans), "avg_bits": avgs, "results": out}, f, indent=2)


if __name__ == "__main__":
    main()
