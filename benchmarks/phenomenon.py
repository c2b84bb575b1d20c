"""The phenomenon fqopt exists for: uniform low-bit quantization hurts the worst group most.

    .venv/bin/python benchmarks/phenomenon.py [--run runs/bench] [--bits 2,3,4,6,8]

Evaluates the run's trained FP model and uniform fake quantization at each bit-width on the
**test** split, in two variants: every Conv2d/Linear weight quantized (FairQuant's uniform
baselines) and stem + head pinned at 8 bits (fqopt's default pins). The worst and best groups are
those of the FP model. For each plan: per-group accuracy; the accuracy drop of the worst and of
the best group in percentage points (``Δ``) and relative to FP accuracy (``rel``); and the rise of
each of the two groups' mean cross-entropy (``ΔCE``). "holds" says whether the worst group lost
more than the best one (absolute points / relative / in loss).
"""

from __future__ import annotations

import argparse

import numpy as np

from fqopt.apply import quantized
from fqopt.evaluation import predict
from fqopt.plan import AllocationPlan
from fqopt.runs import Run
from fqopt.units import discover_units


def group_figures(model, ds, idx):
    """``(accuracy [G], mean cross-entropy [G])`` on ``idx``."""
    p = predict(model, ds, idx, batch_size=512)
    acc = np.array([(p["y_pred"] == p["y_true"])[p["groups"] == g].mean()
                    for g in range(ds.num_groups)])
    loss = np.array([p["loss"][p["groups"] == g].mean() for g in range(ds.num_groups)])
    return acc, loss


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/bench")
    ap.add_argument("--bits", default="2,3,4,6,8")
    ap.add_argument("--quantizer", default="maxabs")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()

    run = Run.open(args.run)
    model = run.model()
    ds = run.dataset()
    idx = ds.split(args.split)
    acc, loss = group_figures(model, ds, idx)
    w, b = int(np.argmin(acc)), int(np.argmax(acc))
    names = ds.group_names
    counts = ds.counts(idx).sum(1)
    print(f"run {args.run}: {run.model_name}, {ds.name}, {args.split} split {len(idx)} samples "
          f"(n per group: " + ", ".join(f"{g} {n}" for g, n in zip(names, counts)) + f"), "
          f"quantizer {args.quantizer}")
    print(f"FP32 worst group {names[w]} ({acc[w]:.4f}), best group {names[b]} ({acc[b]:.4f})\n")
    cols = "".join(f"{g:>7}" for g in names)
    print(f"{'plan':<20}{cols}{'avg':>7}{'gap':>7} | {'Δworst':>7}{'Δbest':>7} | "
          f"{'rel w':>6}{'rel b':>6} | {'ΔCE w':>7}{'ΔCE b':>7} | holds abs/rel/CE")
    print(f"{'fp32':<20}" + "".join(f"{a:>7.3f}" for a in acc)
          + f"{acc.mean():>7.3f}{acc.mean() - acc.min():>7.3f}")
    for variant, pin in (("all", "none"), ("pinned", "default")):
        units = discover_units(model, "layer", pin=pin)
        for bits in [int(x) for x in args.bits.split(",")]:
            plan = AllocationPlan.uniform(units, bits, model=run.model_name)
            with quantized(model, plan, method=args.quantizer, units=units):
                qa, ql = group_figures(model, ds, idx)
            dw, db = 100 * (acc[w] - qa[w]), 100 * (acc[b] - qa[b])
            rw, rb = dw / acc[w], db / acc[b]
            lw, lb = ql[w] - loss[w], ql[b] - loss[b]
            holds = "/".join("yes" if c else "no" for c in (dw > db, rw > rb, lw > lb))
            print(f"{f'{bits}-bit {variant}':<20}" + "".join(f"{a:>7.3f}" for a in qa)
                  + f"{qa.mean():>7.3f}{qa.mean() - qa.min():>7.3f} | {dw:>7.1f}{db:>7.1f} | "
                    f"{rw:>5.0f}%{rb:>5.0f}% | {lw:>7.3f}{lb:>7.3f} | {holds}")
    print("\nall: every Conv2d/Linear weight at b bits; pinned: stem and head at 8 bits. "
          "Δ in points, rel = Δ / FP accuracy, ΔCE = rise of the group's mean cross-entropy.")


if __name__ == "__main__":
    main()
