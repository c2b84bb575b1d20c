"""The phenomenon fqopt exists for: uniform low-bit quantization hurts the worst group most.

    .venv/bin/python benchmarks/phenomenon.py [--run runs/bench] [--bits 2,3,4,6,8]
        [--quantizer maxabs[,mse]] [--split test | --fresh 30000 [--fresh-seed 1001]]

Evaluates the run's trained FP model and uniform fake quantization at each bit-width on the
**test** split (``--split``) or, for a synthderm run, on ``--fresh N`` newly generated synthderm
images (same generator and image size, seed ``--fresh-seed``: i.i.d. held-out samples, so the
small darkest group is not measured on a few dozen test images), in two variants: every
Conv2d/Linear weight quantized (FairQuant's uniform baselines) and stem + head pinned at 8 bits
(fqopt's default pins). The worst and best groups are those of the FP model. For each plan:
per-group accuracy; the accuracy drop of the worst and of the best group in percentage points
(``Δ``) and relative to FP accuracy (``rel``); and the rise of each of the two groups' mean
cross-entropy (``ΔCE``). "holds" says whether the worst group lost more than the best one
(absolute points / relative / in loss). ``--quantizer maxabs,mse`` runs each quantizer in turn
(rows tagged with it) in the same table.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from fqopt.apply import quantized
from fqopt.data._synthderm import load_synthderm
from fqopt.errors import UserError
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


def fresh_dataset(run, n: int, seed: int):
    """``n`` new synthderm samples like the run's (same size and grouping), drawn with ``seed``."""
    spec = run.config["dataset"]
    if spec["name"] != "synthderm":
        raise UserError(f"--fresh needs a synthderm run; run {run.path} uses dataset "
                        f"{spec['name']!r} (use --split instead)")
    opts = spec.get("options", {})
    if int(opts.get("seed", 0)) == seed:
        raise UserError(f"--fresh-seed {seed} is the run's own dataset seed; pick another")
    return load_synthderm(n=n, image_size=run.image_size, seed=seed, holdout=0,
                          grouping=opts.get("grouping", "type6"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/bench")
    ap.add_argument("--bits", default="2,3,4,6,8")
    ap.add_argument("--quantizer", default="maxabs", help="maxabs, mse, or a list: maxabs,mse")
    ap.add_argument("--split", default="test")
    ap.add_argument("--fresh", type=int, default=0, metavar="N",
                    help="evaluate on N freshly generated synthderm images instead of --split")
    ap.add_argument("--fresh-seed", type=int, default=1001)
    args = ap.parse_args()

    run = Run.open(args.run)
    model = run.model()
    if args.fresh:
        ds = fresh_dataset(run, args.fresh, args.fresh_seed)
        idx = np.arange(len(ds))
        where = f"fresh synthderm (seed {args.fresh_seed}) {len(idx)} samples"
    else:
        ds = run.dataset()
        idx = ds.split(args.split)
        where = f"{args.split} split {len(idx)} samples"
    quantizers = [q.strip() for q in args.quantizer.split(",") if q.strip()]
    acc, loss = group_figures(model, ds, idx)
    w, b = int(np.argmin(acc)), int(np.argmax(acc))
    names = ds.group_names
    counts = ds.counts(idx).sum(1)
    print(f"run {args.run}: {run.model_name}, {ds.name}, {where} "
          f"(n per group: " + ", ".join(f"{g} {n}" for g, n in zip(names, counts)) + f"), "
          f"quantizer {', '.join(quantizers)}")
    print(f"FP32 worst group {names[w]} ({acc[w]:.4f}), best group {names[b]} ({acc[b]:.4f})\n")
    cols = "".join(f"{g:>7}" for g in names)
    width = 20 + (max(map(len, quantizers)) + 1 if len(quantizers) > 1 else 0)
    print(f"{'plan':<{width}}{cols}{'avg':>7}{'gap':>7} | {'Δworst':>7}{'Δbest':>7} | "
          f"{'rel w':>6}{'rel b':>6} | {'ΔCE w':>7}{'ΔCE b':>7} | holds abs/rel/CE")
    print(f"{'fp32':<{width}}" + "".join(f"{a:>7.3f}" for a in acc)
          + f"{acc.mean():>7.3f}{acc.mean() - acc.min():>7.3f}")
    for quantizer in quantizers:
        tag = f" {quantizer}" if len(quantizers) > 1 else ""
        for variant, pin in (("all", "none"), ("pinned", "default")):
            units = discover_units(model, "layer", pin=pin)
            for bits in [int(x) for x in args.bits.split(",")]:
                plan = AllocationPlan.uniform(units, bits, model=run.model_name)
                with quantized(model, plan, method=quantizer, units=units):
                    qa, ql = group_figures(model, ds, idx)
                dw, db = 100 * (acc[w] - qa[w]), 100 * (acc[b] - qa[b])
                rw, rb = dw / acc[w], db / acc[b]
                lw, lb = ql[w] - loss[w], ql[b] - loss[b]
                holds = "/".join("yes" if c else "no" for c in (dw > db, rw > rb, lw > lb))
                print(f"{f'{bits}-bit {variant}{tag}':<{width}}"
                      + "".join(f"{a:>7.3f}" for a in qa)
                      + f"{qa.mean():>7.3f}{qa.mean() - qa.min():>7.3f} | {dw:>7.1f}{db:>7.1f} | "
                        f"{rw:>5.0f}%{rb:>5.0f}% | {lw:>7.3f}{lb:>7.3f} | {holds}")
    print("\nall: every Conv2d/Linear weight at b bits; pinned: stem and head at 8 bits. "
          "Δ in points, rel = Δ / FP accuracy, ΔCE = rise of the group's mean cross-entropy.")


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
