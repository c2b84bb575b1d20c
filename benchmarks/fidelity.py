"""Fidelity of the sensitivity tables: predicted vs measured per-group loss rise.

    .venv/bin/python benchmarks/fidelity.py [--run runs/bench] [--plans 60] [--calib 1024]
        [--seed 0] [--plan-bits 2,3,4,6,8] [--methods fisher,...,measured@eval]

Profiles the run's FP model at layer granularity with every method (calibration: up to
``--calib`` train samples, stratified by group), draws ``--plans`` random layer-granularity plans
whose parameter-weighted average bits spread evenly over [2.5, 6] (bits 2/3/4/6/8; stem and head
pinned at 8 as the solvers do, or every layer free with ``--pin none``), measures every group's
mean cross-entropy rise on the held-out **search** split under each plan (fake quantization in
place), and reports per group the Spearman rank correlation between the predicted
``C_g = Σ_u costs[u, g, x_u]`` and the measured rise. Goal: >= 0.9 for ``fisher``.

``measured@eval`` is a reference, not a method: the ``measured`` single-layer table computed on
the very samples the rises are measured on (all of ``--split``). It is what an additive table of
exact single-layer costs reaches, i.e. about the ceiling of any table the solvers can use.
``--plan-bits`` restricts the bit-widths the random plans draw from (the table keeps 2/3/4/6/8).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from scipy.stats import spearmanr

from fqopt.apply import quantized
from fqopt.errors import UserError
from fqopt.evaluation import predict
from fqopt.plan import AllocationPlan
from fqopt.profiling import profile
from fqopt.runs import Run
from fqopt.units import discover_units

CANDIDATES = np.array([2, 3, 4, 6, 8])   # the table's bit-widths
# label -> (method, profile() options overriding the command line's)
VARIANTS = {
    "fisher": ("fisher", {}),
    "fisher+1st": ("fisher", {"first_order": True}),
    "hutchinson": ("hutchinson", {}),
    "hutchinson+1st": ("hutchinson", {"first_order": True}),
    "gradient": ("gradient", {}),
    "grape": ("grape", {}),
    "measured": ("measured", {}),
    # reference: exact single-layer costs on the evaluation samples themselves
    "measured@eval": ("measured", {"calib": None, "on_eval": True}),
    # estimator studies (not in the default list)
    "fisher-bs16": ("fisher", {"batch_size": 16}),
    "fisher-bs1": ("fisher", {"batch_size": 1}),
    "fisher-calib-all": ("fisher", {"calib": None}),
    "hutchinson-p4": ("hutchinson", {"hutchinson_probes": 4}),
    # curvature studies computed here, not fqopt methods (see study_table)
    "ggn": ("study", {"kind": "ggn"}),
    "lin-ce": ("study", {"kind": "lin-ce"}),
    "fisher-sampled": ("study", {"kind": "fisher-sampled"}),
    "measured-ctx": ("study", {"kind": "measured-ctx"}),
}
DEFAULT_VARIANTS = ("fisher", "fisher+1st", "hutchinson", "hutchinson+1st", "gradient", "grape",
                    "measured")


def random_plans(units, n, seed, lo=2.5, hi=6.0, candidates=CANDIDATES):
    """``n`` random ``[U]`` bit vectors whose parameter-weighted averages spread evenly over
    [lo, hi]: random bits (a random mix of ``candidates``), then random single-layer steps
    towards the target average until it is within 0.15 bits of it."""
    cand = np.asarray(candidates)
    lo = max(lo, float(cand.min()))   # no plan averages below its lowest bit-width
    rng = np.random.default_rng(seed)
    free = np.flatnonzero([name not in units.pinned for name in units.names])
    sizes = units.sizes.astype(float)
    plans = []
    for target in np.linspace(lo + 0.05, hi - 0.05, n):
        level = np.array([cand.tolist().index(units.pinned.get(name, 8))
                          for name in units.names])
        p = rng.dirichlet(np.ones(len(cand)))
        level[free] = rng.choice(len(cand), size=len(free), p=p)
        for _ in range(10000):
            avg = float((cand[level] * sizes).sum() / sizes.sum())
            if abs(avg - target) < 0.15:
                break
            step = -1 if avg > target else 1
            movable = free[(level[free] + step >= 0) & (level[free] + step < len(cand))]
            if len(movable) == 0:
                break
            level[rng.choice(movable)] += step
        avg = float((cand[level] * sizes).sum() / sizes.sum())
        if lo <= avg <= hi:
            plans.append(cand[level].copy())
    return plans


def study_table(model, ds, idx, units, kind, *, calib, seed, batch_size):
    """``[U, G, K]`` costs from estimators that fqopt does not ship, to locate the limit of the
    second-order family (same calibration samples and group-homogeneous batches as ``profile``):

    - ``ggn``: ``½·Δz^T (diag p − p p^T) Δz`` with ``Δz = J_u δ`` the exact first-order change of
      the logits (a forward-mode JVP per layer and bit-width): the exact Gauss-Newton quadratic,
      with every correlation inside the layer and the exact propagation through the network;
    - ``lin-ce``: the exact cross-entropy of ``z + J_u δ``: linearised network, exact loss;
    - ``fisher-sampled``: the ``fisher`` estimator with labels drawn from the model's own
      softmax (the "true" Fisher, whose mean gradient is zero by construction);
    - ``measured-ctx``: single-layer loss changes measured in context, averaged over 8 random
      background plans (every free layer at a uniformly drawn bit-width) instead of at full
      precision: ``ℓ(B with u at b) − ℓ(B with u at 8)``.
    """
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, jvp

    from fqopt.profiling import Calibration, select_calibration
    from fqopt.quantizers import fake_quantize
    from fqopt.units import quantizable_layers

    model.eval()
    chosen = select_calibration(ds.groups, idx, calib, seed)
    if kind == "measured-ctx":
        return _measured_in_context(model, ds, chosen, units, seed=seed)
    named = dict(quantizable_layers(model))
    weights = [named[layer.name].weight.detach() for layer in units.layers]
    names = [f"{layer.name}.weight" for layer in units.layers]
    deltas = [[fake_quantize(w, int(b)) - w for b in CANDIDATES] for w in weights]
    cal = Calibration(ds, chosen, batch_size=batch_size, seed=seed)
    costs = np.zeros((len(units), ds.num_groups, len(CANDIDATES)))
    gen = torch.Generator().manual_seed(seed)
    for g, x, y in cal:
        if kind == "fisher-sampled":
            params = [w.clone().requires_grad_(True) for w in weights]
            logits = functional_call(model, dict(zip(names, params)), (x,))
            ys = torch.multinomial(logits.detach().softmax(1), 1, generator=gen).squeeze(1)
            grads = torch.autograd.grad(F.cross_entropy(logits, ys), params)
            for li, gr in enumerate(grads):
                for k, d in enumerate(deltas[li]):
                    costs[li, g, k] += 0.5 * len(y) ** 2 * float((gr * gr * d * d).sum())
            continue
        with torch.no_grad():
            z = model(x)
            p = z.softmax(1)
            base = F.cross_entropy(z, y, reduction="sum")
        for li, name in enumerate(names):
            def logits_of(w, name=name):
                return functional_call(model, {name: w}, (x,))
            for k, d in enumerate(deltas[li]):
                with torch.no_grad():
                    _, dz = jvp(logits_of, (weights[li],), (d,))
                if kind == "ggn":
                    quad = (p * dz ** 2).sum(1) - (p * dz).sum(1) ** 2
                    costs[li, g, k] += 0.5 * float(quad.sum())
                else:
                    costs[li, g, k] += float(F.cross_entropy(z + dz, y, reduction="sum") - base)
    return costs / np.maximum(cal.group_counts, 1)[None, :, None]


def _measured_in_context(model, ds, idx, units, *, seed, backgrounds=8):
    from fqopt.apply import quantized_layers

    rng = np.random.default_rng(seed)
    names = [layer.name for layer in units.layers]
    free = [i for i, n in enumerate(names) if n not in units.pinned]
    costs = np.zeros((len(units), ds.num_groups, len(CANDIDATES)))
    for _ in range(backgrounds):
        bg = {n: int(units.pinned.get(n, 8)) for n in names}
        bg.update({names[i]: int(rng.choice(CANDIDATES)) for i in free})
        for i in free:
            at = {}
            for b in CANDIDATES:
                with quantized_layers(model, {**bg, names[i]: int(b)}):
                    at[int(b)] = group_losses(model, ds, idx)
            for k, b in enumerate(CANDIDATES):
                costs[i, :, k] += at[int(b)] - at[8]
    return costs / backgrounds


def group_losses(model, ds, idx):
    pred = predict(model, ds, idx, batch_size=512)
    return np.array([pred["loss"][pred["groups"] == g].mean() for g in range(ds.num_groups)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/bench")
    ap.add_argument("--plans", type=int, default=60)
    ap.add_argument("--calib", type=int, default=1024)
    ap.add_argument("--pin", default="default")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random plans")
    ap.add_argument("--calib-seed", type=int, default=0,
                    help="seed of the calibration sample and batching")
    ap.add_argument("--plan-bits", default="2,3,4,6,8",
                    help="bit-widths the random plans draw from (a subset of 2,3,4,6,8)")
    ap.add_argument("--methods", default=",".join(DEFAULT_VARIANTS),
                    help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--split", default="search",
                    help="held-out split(s) the loss rises are measured on, e.g. search+test")
    ap.add_argument("--rises", default=None,
                    help="cache of the measured loss rises (.npz): reused when its plans match")
    ap.add_argument("--batch-size", type=int, default=64, help="profiling batch size")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    wanted = args.methods.split(",")
    unknown = [w for w in wanted if w not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    try:
        plan_bits = sorted(int(b) for b in args.plan_bits.split(","))
    except ValueError:
        plan_bits = []
    if not plan_bits or not set(plan_bits) <= set(CANDIDATES.tolist()) or 8 not in plan_bits:
        ap.error(f"--plan-bits {args.plan_bits!r}: expected a comma list from "
                 f"{CANDIDATES.tolist()} that includes 8 (the pins' bit-width)")
    run = Run.open(args.run)
    model = run.model()
    ds = run.dataset()
    search = np.concatenate([ds.split(s) for s in args.split.split("+")])
    units = discover_units(model, "layer", pin=args.pin)
    plans = random_plans(units, args.plans, args.seed, candidates=plan_bits)
    avgs = [float((b * units.sizes).sum() / units.sizes.sum()) for b in plans]
    print(f"run {args.run}: {run.model_name}, {len(units)} layers, {len(plans)} random plans, "
          f"avg bits {min(avgs):.2f}-{max(avgs):.2f}, pins {units.pinned or 'none'}, "
          f"{args.split} split {len(search)} samples, calib {args.calib} train samples, "
          f"plan bits {plan_bits}, plan seed {args.seed}")

    t0 = time.perf_counter()
    rises = None
    if args.rises and os.path.exists(args.rises):
        try:
            with np.load(args.rises) as z:
                if (z["plans"].shape == np.shape(plans) and np.array_equal(z["plans"], plans)
                        and "split" in z.files and str(z["split"]) == args.split):
                    rises = z["rises"]
        except (OSError, ValueError, KeyError) as e:
            ap.error(f"--rises {args.rises}: not a rises cache written by this script ({e})")
    if rises is None:
        base = group_losses(model, ds, search)
        rises = []
        for bits in plans:
            plan = AllocationPlan.from_unit_bits(units, bits, model=run.model_name)
            with quantized(model, plan, units=units):
                rises.append(group_losses(model, ds, search) - base)
        rises = np.array(rises)                                     # [plans, G]
        if args.rises:
            np.savez(args.rises, plans=np.array(plans), rises=rises, split=args.split)
    print(f"measured {len(plans)} plans in {time.perf_counter() - t0:.1f} s; loss rise "
          f"range {rises.min():.4f} .. {rises.max():.4f}")

    rows, out = [], {}
    for label in wanted:
        method, opts = VARIANTS[label]
        kwargs = dict(calib=args.calib, pin=args.pin, seed=args.calib_seed,
                      batch_size=args.batch_size)
        kwargs.update(opts)
        calib_idx = search if kwargs.pop("on_eval", False) else ds.split("train")
        t0 = time.perf_counter()
        if method == "study":
            costs = study_table(model, ds, calib_idx, units, kwargs["kind"], calib=args.calib,
                                seed=args.calib_seed, batch_size=args.batch_size)
        else:
            costs = profile(model, ds, calib_idx, method=method, granularity="layer",
                            **kwargs).costs
        secs = time.perf_counter() - t0
        k_of = {int(b): k for k, b in enumerate(CANDIDATES)}
        G = ds.num_groups
        pred = np.array([[costs[np.arange(len(bits)), g, [k_of[int(b)] for b in bits]].sum()
                          for g in range(G)] for bits in plans])
        rho = [float(spearmanr(pred[:, g], rises[:, g])[0]) for g in range(G)]
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
            json.dump({"plans": len(plans), "plan_seed": args.seed, "plan_bits": plan_bits,
                       "split": args.split, "avg_bits": avgs, "results": out}, f, indent=2)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:   # a wrong run folder, pin or option: one line, exit 2
        print(f"fidelity.py: error: {e}", file=sys.stderr)
        sys.exit(2)
