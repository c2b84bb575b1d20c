"""Search overhead per trial: (solve + apply + restore) / evaluation, on a trained run.

    .venv/bin/python benchmarks/search_overhead.py [--run runs/default] [--trials 16]

For channel and layer granularity, runs a short study (sampled trials only, in a temporary
SQLite file, the run folder is not touched except for cached tables) twice: with the search's
weight bank (precomputed per-bit weights, the default) and with ``fqopt.apply.quantized``
(fake-quantizing every layer each trial). Prints medians per trial and the ratio. Goal: ≤ 0.05.
Trains the run first if it has no model (as ``fqopt search`` would).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path


def main(argv=None) -> int:
    import optuna
    import torch

    from fqopt.search import SearchSpace, SplitEvaluator
    from fqopt.search import run as search_run
    from fqopt.search._pipeline import TrainOptions, ensure_tables, ensure_trained
    from fqopt.search._trial import WeightBank

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/default")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--granularity", default="channel,layer")
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    run, _ = ensure_trained(args.run, TrainOptions())
    model = run.model()
    ds = run.dataset()
    methods = ["fisher", "gradient", "grape"]
    print(f"run {run.path}: {run.model_name}, {ds.name} {ds.image_size}px, search split "
          f"{len(ds.split('search'))} images; torch threads {torch.get_num_threads()}")
    rows = []
    for gran in args.granularity.split(","):
        tables, _ = ensure_tables(run, methods, gran, model=model)
        units = next(iter(tables.values())).num_units
        for path in ("bank", "apply.quantized"):
            bank, build = None, 0.0
            if path == "bank":  # built once before the trials, as fqopt.search.run does
                t0 = time.perf_counter()
                bank = WeightBank(model, [2, 3, 4, 6, 8])
                for q in ("maxabs", "mse"):
                    bank.bank(q)
                build = time.perf_counter() - t0
            evaluator = SplitEvaluator(model, ds, "search", bank=bank)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                study = search_run(run, tables, n_trials=args.trials, seeds=False, seed=0,
                                   storage=f"sqlite:///{Path(tmp) / 'bench.db'}",
                                   study_name="bench", evaluator=evaluator,
                                   space=SearchSpace(methods=tuple(methods)))
                wall = time.perf_counter() - t0
                secs = [t.user_attrs["seconds"] for t in study.trials
                        if t.user_attrs.get("seconds", {}).get("evaluate", 0) > 0]
            med = {k: statistics.median(s[k] for s in secs)
                   for k in ("solve", "apply", "restore", "evaluate")}
            ratios = [(s["solve"] + s["apply"] + s["restore"]) / s["evaluate"] for s in secs]
            rows.append([gran, units, path, len(secs), *(1000 * med[k] for k in
                         ("solve", "apply", "restore", "evaluate")),
                         statistics.median(ratios), max(ratios), wall / args.trials, build])
    head = ["granularity", "units", "apply path", "trials", "solve ms", "apply ms",
            "restore ms", "evaluate ms", "ratio (median)", "ratio (max)", "s/trial",
            "bank build s (once)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.1f} | "
              f"{r[7]:.0f} | {r[8]:.3f} | {r[9]:.3f} | {r[10]:.2f} | {r[11]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
