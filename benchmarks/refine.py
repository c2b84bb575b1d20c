"""BAQ refinement on the default (synthderm + test_resnet): static plan vs refined plan.

One command::

    .venv/bin/python benchmarks/refine.py [--run runs/bench-baq] [--budgets 3.0,4.0]
                                          [--seeds 0,1,2] [--epochs 2] [--finetune-epochs 1]
                                          [--steps-per-epoch 25]

1. The run (default ``runs/bench-baq``) is trained with ``fqopt train`` defaults if it has no
   model (``--train-epochs`` caps the epochs), and profiled (``fisher``, channel units, bits
   2,3,4,6,8, pins: stem and head at 8) if it has no ``sensitivity.npz``.
2. Per budget, the static plan: ``objective worst`` solved by ``lagrange``.
3. Per budget and seed: ``fqopt.refine`` (BAQ: ``--epochs`` of joint bit/weight training, then
   rounding under the exact budget and ``--finetune-epochs`` of fixed-bit fine-tuning) and, as a
   control with the same number of steps, fixed-bit fine-tuning of the static plan's own bits
   (``epochs=0``, so only the weights train: QAT).
4. The step time of refinement over the step time of fixed-bit fine-tuning, alternated on the
   same batches (``fqopt.baq.measure_step_times``; goal ≤ 1.5).

Prints a table of mean ± sd over the seeds of test ``avg_acc`` and ``worst_acc``; the static plan
is deterministic (sd 0). Seeds vary the refinement (sample order, augmentation), not the run.
Writes everything to ``RUN/bench_refine.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch


def parse_list(text, kind=float):
    return [kind(x) for x in text.split(",") if x.strip()]


def prepare_run(path: Path, train_epochs: int, device: str):
    from fqopt.runs import Run
    from fqopt.training import TrainConfig, train

    if (path / "config.json").exists():
        run = Run.open(path)
    else:
        run = Run.create(path)
    if not run.has_model() or (run.train_state_path.exists() and not torch.load(
            run.train_state_path, map_location="cpu", weights_only=True)["state"]["finished"]):
        print(f"training {path} ({train_epochs} epochs) ...", file=sys.stderr)
        train(run, TrainConfig(epochs=train_epochs, device=device))
    return run


def sensitivity(run, device: str):
    from fqopt.evaluation import resolve_device
    from fqopt.profiling import profile
    from fqopt.sensitivity import SensitivityTable

    if run.table_path.exists():
        table = SensitivityTable.load(run.table_path)
        if table.meta.get("granularity") == "channel":
            return table
    print("profiling (fisher, channel) ...", file=sys.stderr)
    model = run.model().to(resolve_device(device))
    ds = run.dataset()
    table = profile(model, ds, ds.split("train"), method="fisher", granularity="channel",
                    bits=(2, 3, 4, 6, 8), calib=1024, seed=run.seed, model_name=run.model_name)
    table.save(run.table_path)
    return table


def mean_sd(values):
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def fmt(values):
    m, s = mean_sd(values)
    return f"{m:.4f} ± {s:.4f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/bench-baq")
    p.add_argument("--budgets", default="3.0,4.0")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--steps-per-epoch", type=int, default=25)
    p.add_argument("--fairness", default="range")
    p.add_argument("--lambda-fair", type=float, default=0.5)
    p.add_argument("--timing-steps", type=int, default=20)
    p.add_argument("--train-epochs", type=int, default=25)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from fqopt.baq import measure_step_times, refine
    from fqopt.evaluation import evaluate, resolve_device
    from fqopt.sensitivity import table_unit_set
    from fqopt.solvers import AllocationProblem, solve

    started = time.perf_counter()
    device = resolve_device(args.device)
    run = prepare_run(Path(args.run), args.train_epochs, args.device)
    table = sensitivity(run, args.device)
    ds = run.dataset()
    us = table_unit_set(table)
    budgets, seeds = parse_list(args.budgets), parse_list(args.seeds, int)
    common = dict(steps_per_epoch=args.steps_per_epoch, fairness=args.fairness,
                  lambda_fair=args.lambda_fair, device=args.device)
    fp = evaluate(run.model().to(device), ds, "test")
    results = {"fp32": {"avg_acc": fp.avg_acc, "worst_acc": fp.worst_acc}, "budgets": {}}
    for budget in budgets:
        problem = AllocationProblem.from_table(table, budget=budget, objective="worst")
        solved = solve(problem, "lagrange")
        plan = solved.to_plan(model=run.model_name)
        run.plans_dir.mkdir(parents=True, exist_ok=True)
        plan.save(run.plans_dir / f"bench_baq_{budget:g}.json")
        static = evaluate(run.model().to(device), ds, "test", plan=plan)
        row = {"plan_avg_bits": plan.avg_bits,
               "static": {"avg_acc": [static.avg_acc], "worst_acc": [static.worst_acc]},
               "qat": {"avg_acc": [], "worst_acc": [], "avg_bits": []},
               "refined": {"avg_acc": [], "worst_acc": [], "avg_bits": [], "budget_used": [],
                           "units_changed": [], "seconds": []}}
        for seed in seeds:
            print(f"budget {budget:g}, seed {seed}: refine ...", file=sys.stderr)
            t0 = time.perf_counter()
            res = refine(run, plan, budget=budget, epochs=args.epochs,
                         finetune_epochs=args.finetune_epochs, seed=seed,
                         out_dir=run.path / "refined" / f"bench-{budget:g}-s{seed}", force=True,
                         **common)
            r = row["refined"]
            r["avg_acc"].append(res.report_test.avg_acc)
            r["worst_acc"].append(res.report_test.worst_acc)
            r["avg_bits"].append(res.plan.avg_bits)
            r["budget_used"].append(res.rounding["budget_used"])
            r["seconds"].append(time.perf_counter() - t0)
            r["units_changed"].append(int((res.plan.unit_bits(us) != plan.unit_bits(us)).sum()))
            assert res.plan.avg_bits <= budget and res.plan.avg_bits == res.rounding["budget_used"]
            # control: the static plan's own bits, weights fine-tuned for the same steps
            print(f"budget {budget:g}, seed {seed}: fixed-bit fine-tune ...", file=sys.stderr)
            qat = refine(run, plan, budget=plan.avg_bits, epochs=0,
                         finetune_epochs=args.epochs + args.finetune_epochs, seed=seed,
                         out_dir=run.path / "refined" / f"bench-qat-{budget:g}-s{seed}",
                         force=True, **common)
            assert qat.plan.assignments == plan.assignments
            row["qat"]["avg_acc"].append(qat.report_test.avg_acc)
            row["qat"]["worst_acc"].append(qat.report_test.worst_acc)
            row["qat"]["avg_bits"].append(qat.plan.avg_bits)
        results["budgets"][f"{budget:g}"] = row
    first = solve(AllocationProblem.from_table(table, budget=budgets[0], objective="worst"),
                  "lagrange").to_plan(model=run.model_name)
    timing = measure_step_times(run, first, steps=args.timing_steps, **common)
    results["timing"] = timing
    results["seconds"] = time.perf_counter() - started
    results["args"] = vars(args)
    results["machine"] = {"platform": platform.platform(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "device": str(device),
                          "cuda": torch.cuda.get_device_name() if device.type == "cuda"
                          else None}
    (run.path / "bench_refine.json").write_text(json.dumps(results, indent=2) + "\n")

    print(f"\nBAQ refinement, {run.model_name} on {ds.name} ({ds.image_size}px), "
          f"fairness {args.fairness} λ_f={args.lambda_fair}, {args.epochs} BAQ epochs + "
          f"{args.finetune_epochs} fine-tune epoch(s) of {args.steps_per_epoch} steps, "
          f"seeds {seeds}; FP32 test avg_acc {fp.avg_acc:.4f}, worst_acc {fp.worst_acc:.4f}")
    print("| budget | plan | avg_bits | test avg_acc | test worst_acc |")
    print("|---:|---|---:|---:|---:|")
    for b, row in results["budgets"].items():
        print(f"| {b} | static (solver, worst) | {row['plan_avg_bits']:.4f} | "
              f"{fmt(row['static']['avg_acc'])} | {fmt(row['static']['worst_acc'])} |")
        print(f"| {b} | static bits + fixed-bit fine-tune | {np.mean(row['qat']['avg_bits']):.4f} "
              f"| {fmt(row['qat']['avg_acc'])} | {fmt(row['qat']['worst_acc'])} |")
        r = row["refined"]
        print(f"| {b} | BAQ refined ({np.mean(r['units_changed']):.0f} units changed) | "
              f"{max(r['avg_bits']):.4f} | {fmt(r['avg_acc'])} | {fmt(r['worst_acc'])} |")
    print(f"\nstep time: refinement {timing['refine_step_s'] * 1e3:.1f} ms, fixed-bit fine-tune "
          f"{timing['fixed_step_s'] * 1e3:.1f} ms, ratio {timing['ratio']:.3f} "
          f"(median of {timing['steps']} alternated steps, batch 64)")
    print(f"total {results['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
