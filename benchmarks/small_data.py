"""Small train splits: fqopt's fine-tune with and without a minimum number of steps.

One command::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/small_data.py \\
        [--families cnn,vit] [--models 3] [--budget 2.5] [--sizes 256,1024] \\
        [--cache runs/frontier] [--out bench_out/small_data.json]

A medical user often has a few hundred labelled images beside the model. fqopt's refinement
fine-tunes for 2 epochs of at most 50 steps; on a small train split an epoch has only
``n / 64`` steps. ``min_finetune_steps=100`` runs as many epochs as 100 steps need. Under a
max-abs fine-tune (session 5's default) a short fine-tune was worse than none; under the plan's
``mse`` quantizer (the default since session 6) the minimum did not help, and the default does
not set it (benchmarks/RESULTS.md, Frontier, session 6).

The models, plans and test draw are :mod:`frontier`'s (``--cache``: the frontier's trained
models, 1,500 test images per skin type, never in any split). For each model the train split
is cut to a stratified subset of ``n`` images (seeded; the FP model, the plan and the test draw
are unchanged), and the static ``worst`` plan at ``--budget`` is compared with

- ``epochs``: fqopt's default fine-tune (2 epochs of at most 50 steps: ``2 · ⌊n/64⌋`` steps);
- ``min100``: the same with ``min_finetune_steps=100``.

Figures: mean ± sd over models of test worst_acc / avg_acc, and paired bootstrap 95 %
intervals (models and test images) of min100 − epochs and min100 − static on worst_acc.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import frontier as F  # noqa: E402  (the frontier's models, plans, test draw and statistics)

from fqopt.errors import UserError  # noqa: E402


def stratified_subset(ds, train: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` of the ``train`` indices (about), every group in its proportion, at least one."""
    rng = np.random.default_rng([seed, n])
    out = []
    for g in np.unique(ds.groups[train]):
        idx = train[ds.groups[train] == g]
        k = max(1, int(round(n * len(idx) / len(train))))
        out.extend(rng.choice(idx, min(k, len(idx)), replace=False).tolist())
    return np.sort(np.array(out, dtype=np.int64))


def run_model(ctx, args, memo) -> dict:
    from fqopt.search import REFINE_MODES

    G = ctx.test.num_groups

    def score(cand):
        correct, bits = F.evaluate(ctx, cand, memo)
        acc = F.group_acc(correct, ctx.test.groups, G)
        return {"worst_acc": float(acc.min()), "avg_acc": float(acc.mean()), "avg_bits": bits,
                "_correct": correct}

    static = F.fqopt_static(ctx, args.budget)
    out = {"static": score(static)}
    ds = ctx.run.dataset()
    full = ds.splits["train"]
    try:
        for n in args.sizes:
            ds.splits["train"] = stratified_subset(ds, full, n, ctx.seed)
            vi = int((ds.groups[ds.splits["train"]] == G - 1).sum())
            for tag, extra in (("epochs", {"min_finetune_steps": None}),
                               ("min100", {"min_finetune_steps": 100})):
                t0 = time.perf_counter()
                settings = {**REFINE_MODES["finetune"], **extra}
                cand = F._fine_tuned(ctx, static.plan, f"small-{tag}-{n}", **settings)
                rec = score(cand)
                rec.update(train=len(ds.splits["train"]), train_vi=vi,
                           seconds=round(time.perf_counter() - t0, 1))
                out[f"{tag}@{n}"] = rec
                F.log(f"  {ctx.name} n={n} {tag:<8} worst {rec['worst_acc']:.4f} avg "
                      f"{rec['avg_acc']:.4f} ({rec['seconds']:.0f} s)")
    finally:
        ds.splits["train"] = full
    return out


def main(argv=None):
    p = F._Parser(description=__doc__.splitlines()[0])   # bad arguments: one line, exit 2
    p.add_argument("--families", default="cnn,vit")
    p.add_argument("--models", type=int, default=3)
    p.add_argument("--budget", type=float, default=2.5)
    p.add_argument("--sizes", default="256,1024", help="train images kept (comma list)")
    p.add_argument("--cache", default="runs/frontier")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--out", default="bench_out/small_data.json")
    args = p.parse_args(argv)
    fams = [f.strip() for f in args.families.split(",") if f.strip()]
    bad = [f for f in fams if f not in F.FAMILIES]
    if bad:
        raise UserError(f"--families: unknown {bad}; expected some of {', '.join(F.FAMILIES)}")
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        raise UserError(f"--sizes: expected whole numbers of images, got {args.sizes!r}") from None
    if not F.MIN_BITS <= args.budget <= F.MAX_BITS:
        raise UserError(f"--budget must be average bits in {F.MIN_BITS}-{F.MAX_BITS}, got "
                        f"{args.budget:g}")
    if args.models < 1:
        raise UserError(f"--models must be at least 1, got {args.models}")
    if not args.sizes or min(args.sizes) < 8:
        raise UserError("--sizes: each size must be at least 8 images")
    torch.set_num_threads(1)
    fargs = F.parse_args(["--families", ",".join(fams), "--models", str(args.models),
                          "--cache", args.cache, "--out", "/dev/null"])
    started = time.perf_counter()
    result = {"command": " ".join(sys.argv), "args": vars(args), "families": {},
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}}
    for fname in fams:
        family = F.FAMILIES[fname]
        test = F.cached_test_draw(Path(args.cache), fargs.test_vi, family.image_size,
                                  fargs.test_seed)
        per_model = []
        for seed in range(args.models):
            ctx = F.ModelContext(fname, family, seed, fargs, test)
            per_model.append(run_model(ctx, args, {}))
        G = test.num_groups
        rows = list(per_model[0])
        table = {}
        print(f"\n### {fname}: {family.model} at {family.image_size} px, {args.budget:g} bits, "
              f"{len(per_model)} model(s), {fargs.test_vi} test images per skin type\n")
        print("| row | train images (type VI) | worst_acc | avg_acc | min100 − this, worst_acc "
              "[95 %] (points) |")
        print("|---|---:|---:|---:|---:|")
        for r in rows:
            w = F.mean_sd([m[r]["worst_acc"] for m in per_model])
            a = F.mean_sd([m[r]["avg_acc"] for m in per_model])
            n = r.split("@")[1] if "@" in r else None
            vs = ""
            if r == "static" or r.startswith("epochs@"):
                for n2 in ([n] if n else [str(s) for s in args.sizes]):
                    d = F.paired_bootstrap([m[f"min100@{n2}"]["_correct"] for m in per_model],
                                           [m[r]["_correct"] for m in per_model],
                                           test.groups, G, args.resamples, seed=7)
                    verdict = "tie" if d["tie"] else ("ahead" if d["diff"] > 0 else "behind")
                    vs += (f"{'n=' + n2 + ': ' if not n else ''}{100 * d['diff']:+.2f} "
                           f"[{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}] {verdict}; ")
                    table[f"min100@{n2} - {r}"] = d
            train = ("— (no training)" if n is None else
                     f"{per_model[0][r]['train']} ({per_model[0][r]['train_vi']})")
            print(f"| {r} | {train} | {w[0]:.4f} ± {w[1]:.4f} | {a[0]:.4f} ± {a[1]:.4f} | "
                  f"{vs.rstrip('; ')} |")
        result["families"][fname] = {
            "per_model": [{r: {k: v for k, v in rec.items() if k != "_correct"}
                           for r, rec in m.items()} for m in per_model],
            "paired": table}
    result["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\ncommand: {result['command']}\nmachine: {platform.platform()}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}; {result['seconds'] / 60:.1f} min; JSON: {out}")


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
