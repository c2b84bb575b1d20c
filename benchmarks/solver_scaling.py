"""Allocation solvers at real model scale: time and certified gap per back-end.

Instances: the real Conv2d/Linear shapes of resnet18, resnet50, deit_tiny_patch16_224 and
tiny_vit_5m_224 (timm, ``pretrained=False``: no download; 1000-class heads), at layer and channel
granularity, with
G ∈ {2, 6} groups, bits (2, 3, 4, 6, 8), the stem and head pinned at 8 bits, objective
``worst`` and a budget of 4.0 average bits. Costs are random but shaped like real ones: positive,
falling ~4^(−b) with bits, proportional to the unit's size, with a layer factor, a channel factor
and a group factor (later groups more sensitive, as darker skin tones are).

Back-ends: ``lagrange`` everywhere; ``cpsat`` and ``milp`` at layer granularity, and once each on
ResNet50 per channel (G = 6) with the time limit, to document where generic solvers stop;
``quantile`` (FairQuant's rule at matched bits, no bound) everywhere. The table prints seconds,
status, the certified gap, and each objective's excess over the best proven bound of its instance.
Then a budget ladder solved with one solver instance against separate solves.

``--profiled``: instead, tables profiled from the real models (``fqopt.profile``, fisher,
channel granularity, synthderm at 224 px, 6 groups, 32 calibration images), at random
initialisation and after ``--train-steps`` AdamW steps (timm zero-initialises the last BatchNorm
of each residual block, so at initialisation most ResNet units cost nothing: the degenerate case
the solver must certify), plus the tables of any ``--run`` folders (their sensitivity*.npz), solved
by ``lagrange`` and ``auto`` at budgets 2.5, 3 and 4 with objectives worst and balanced.

    .venv/bin/python benchmarks/solver_scaling.py [--time-limit 60] [--quick]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/solver_scaling.py --profiled \
        [--train-steps 8] [--run runs/default] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

MODELS = ("resnet18", "resnet50", "deit_tiny_patch16_224", "tiny_vit_5m_224")
BITS = (2, 3, 4, 6, 8)
GROUPS = (2, 6)
BUDGET = 4.0


def layer_shapes(name: str):
    """The model's quantizable layers (name, shape, MACs), pins and float parameter count."""
    import timm
    import torch

    from fqopt.units import discover_units

    torch.manual_seed(0)
    # ImageNet heads everywhere (tiny_vit_5m_224's default head has 21,841 classes)
    model = timm.create_model(name, pretrained=False, num_classes=1000)
    units = discover_units(model, "layer", input_size=(3, 224, 224))
    return units


def random_table(units, granularity: str, G: int, seed: int):
    """A SensitivityTable over the model's real units with realistic random costs."""
    from fqopt.sensitivity import SensitivityTable
    from fqopt.units import UnitSet

    us = UnitSet(granularity=granularity, layers=units.layers, pinned=dict(units.pinned),
                 float_params=units.float_params)
    rng = np.random.default_rng(seed)
    bits = np.array(BITS)
    layer_f = rng.lognormal(0.0, 1.0, len(us.layers))[us.layer_of]
    unit_f = rng.lognormal(0.0, 0.5 if granularity == "channel" else 0.0, len(us))
    group_f = np.linspace(1.0, 1.3, G)[None, :] * rng.lognormal(0.0, 0.25, (len(us), G))
    err = 4.0 ** (-bits.astype(float)) * np.array([1.6, 1.2, 1.0, 1.0, 1.0])  # 2-bit worse
    costs = (us.sizes * layer_f * unit_f)[:, None, None] * group_f[:, :, None] * err
    costs *= rng.uniform(0.9, 1.1, costs.shape)
    costs = -np.sort(-costs, axis=2)  # still falling with bits after the noise
    meta = {"model": "random", "granularity": granularity, "shapes": us.shapes(),
            "pinned": us.pinned, "float_params": us.float_params}
    return SensitivityTable(costs=costs, bits=bits, sizes=us.sizes, units=us.names,
                            groups=[f"g{g}" for g in range(G)],
                            group_counts=np.full(G, 100), macs=us.macs, meta=meta)


def profiled_table(name: str, train_steps: int, cache: str | None):
    """A fisher channel table of timm ``name`` at 224 px on synthderm (6 groups, 32 calibration
    images), after ``train_steps`` AdamW steps of batch 16 (0: random initialisation)."""
    import os

    import torch
    import timm

    from fqopt.data._synthderm import load_synthderm
    from fqopt.profiling import profile
    from fqopt.sensitivity import SensitivityTable

    path = None if cache is None else os.path.join(cache, f"{name}-steps{train_steps}.npz")
    if path and os.path.exists(path):
        return SensitivityTable.load(path)
    ds = load_synthderm(n=800 if train_steps else 600, image_size=224, seed=0, holdout=0)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=ds.num_classes)
    if train_steps:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        train = ds.split("train")
        rng = np.random.default_rng(0)
        model.train()
        for _ in range(train_steps):
            batch = [ds[int(i)] for i in rng.choice(train, 16, replace=False)]
            x = torch.stack([b[0] for b in batch])
            y = torch.as_tensor([b[1] for b in batch])
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    table = profile(model, ds, "train", method="fisher", granularity="channel", calib=32,
                    batch_size=16, model_name=name)
    if path:
        os.makedirs(cache, exist_ok=True)
        table.save(path)
    return table


def profiled_rows(args) -> list[dict]:
    """lagrange and auto on real profiled tables (see the module docstring)."""
    import glob
    import os

    from fqopt.sensitivity import SensitivityTable
    from fqopt.solvers import AllocationProblem, solve

    tables = []
    for name in args.models.split(","):
        for steps in (0, args.train_steps):
            tables.append((f"{name} {'init' if steps == 0 else f'{steps} steps'}",
                           profiled_table(name, steps, args.cache)))
    for run in args.run or []:
        for path in sorted(glob.glob(os.path.join(run, "sensitivity*.npz"))):
            tables.append((os.path.relpath(path), SensitivityTable.load(path)))
    header = (f"{'table':<40} {'units':>6} {'objective':<9} {'budget':>6} {'backend':<9} "
              f"{'picked':<9} {'seconds':>8} {'status':<9} {'gap':>9} {'avg bits':>8}")
    print(header)
    print("-" * len(header), flush=True)
    rows = []
    for label, table in tables:
        nz = float((np.abs(table.costs).max(axis=(1, 2)) > 0).mean())
        for objective in ("worst", "balanced"):
            for budget in (2.5, 3.0, 4.0):
                problem = AllocationProblem.from_table(table, budget=budget,
                                                       objective=objective)
                if problem.min_budget() > budget:
                    continue
                for backend in ("lagrange", "auto"):
                    reps = [solve(problem, backend, time_limit=args.time_limit)
                            for _ in range(args.repeat)]
                    res = sorted(reps, key=lambda r: r.seconds)[len(reps) // 2]
                    row = {"table": label, "units": table.num_units,
                           "nonzero_units": nz, "objective": objective, "budget": budget,
                           "backend": backend, "picked": res.backend,
                           "seconds": res.seconds, "status": res.status, "gap": res.gap,
                           "avg_bits": res.budget_used}
                    rows.append(row)
                    print(f"{label:<40} {table.num_units:>6} {objective:<9} {budget:>6.2f} "
                          f"{backend:<9} {res.backend:<9} {res.seconds:>8.3f} "
                          f"{res.status:<9} {res.gap:>9.1e} {res.budget_used:>8.3f}",
                          flush=True)
    worst = max(rows, key=lambda r: r["gap"])
    slow = max((r for r in rows if r["backend"] == "auto" and r["picked"] == "lagrange"),
               key=lambda r: r["seconds"], default=None)
    print(f"\nlargest certified gap: {worst['gap']:.1e} ({worst['table']}, {worst['objective']}, "
          f"{worst['budget']}, {worst['backend']})")
    if slow:
        print(f"slowest auto solve that lagrange certified: {slow['seconds']:.3f} s "
              f"({slow['table']}, {slow['units']} units)")
    return rows


def ladder_rows(time_limit: float) -> list[dict]:
    """A budget ladder 3:6:0.25 (13 budgets) on ResNet50, solved with one solver instance
    (``solve_ladder``: lagrange keeps its cuts, milp its compiled problem with the budget as a
    Parameter) against 13 independent solves."""
    from fqopt.solvers import AllocationProblem, solve, solve_ladder

    units = layer_shapes("resnet50")
    budgets = np.arange(3.0, 6.0 + 1e-9, 0.25)
    print(f"\nbudget ladder 3:6:0.25 ({len(budgets)} budgets) on resnet50, G=6")
    print(f"{'granularity':<12} {'backend':<9} {'ladder s':>9} {'separate s':>11} "
          f"{'ratio':>6} {'max gap':>8}")
    out = []
    for granularity, backend in (("channel", "lagrange"), ("layer", "milp"),
                                 ("layer", "cpsat")):
        table = random_table(units, granularity, 6, seed=6)
        problem = AllocationProblem.from_table(table, budget=4.0, objective="worst")
        solve(problem, backend, time_limit=time_limit)  # imports and caches out of the timing
        problem = AllocationProblem.from_table(table, budget=4.0, objective="worst")
        t = time.perf_counter()
        warm = solve_ladder(problem, budgets, backend, time_limit=time_limit)
        t_warm = time.perf_counter() - t
        t = time.perf_counter()
        cold = [solve(problem.with_budget(b), backend, time_limit=time_limit) for b in budgets]
        t_cold = time.perf_counter() - t
        gap = max(r.gap for r in warm + cold)
        out.append({"granularity": granularity, "backend": backend, "ladder_s": t_warm,
                    "separate_s": t_cold, "max_gap": gap})
        print(f"{granularity:<12} {backend:<9} {t_warm:>9.2f} {t_cold:>11.2f} "
              f"{t_cold / t_warm:>5.2f}x {gap:>8.1e}", flush=True)
    return out


def timed_import(module: str) -> float:
    t = time.perf_counter()
    __import__(module)
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--quick", action="store_true",
                    help="skip the generic solvers at channel granularity")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--repeat", type=int, default=3, help="lagrange repeats (median reported)")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--profiled", action="store_true",
                    help="real profiled tables instead of random costs (see the docstring)")
    ap.add_argument("--train-steps", type=int, default=8,
                    help="--profiled: AdamW steps for the 'trained' tables")
    ap.add_argument("--run", action="append",
                    help="--profiled: also every sensitivity*.npz of this run folder")
    ap.add_argument("--cache", help="--profiled: keep the profiled tables here")
    args = ap.parse_args(argv)
    if args.train_steps < 1 or args.repeat < 1:
        ap.error("--train-steps and --repeat must be at least 1")
    if args.profiled:
        rows = profiled_rows(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"profiled": rows}, f, indent=1)
        return 0

    from fqopt.solvers import AllocationProblem, solve

    imports = {m: timed_import(m) for m in ("scipy.optimize", "ortools.sat.python.cp_model",
                                            "cvxpy")}
    print("one-time import seconds (not in the solve times): "
          + ", ".join(f"{k} {v:.2f}" for k, v in imports.items()), flush=True)
    rows = []
    header = (f"{'model':<22} {'gran':<7} {'units':>6} {'G':>2} {'backend':<14} "
              f"{'seconds':>8} {'status':<9} {'gap':>9} {'excess':>9}")
    print(header)
    print("-" * len(header), flush=True)
    for name in args.models.split(","):
        units = layer_shapes(name)
        for granularity in ("layer", "channel"):
            for G in GROUPS:
                table = random_table(units, granularity, G, seed=G)
                problem = AllocationProblem.from_table(table, budget=BUDGET, objective="worst")
                free = problem.reduced().num_units
                runs = [("lagrange", "lagrange", {})]
                big = granularity == "channel"
                if not big:
                    runs += [("cpsat", "cpsat", {}), ("milp", "milp", {})]
                elif name == "resnet50" and G == 6 and not args.quick:
                    runs += [("cpsat", "cpsat", {"warm_start": False}),
                             ("cpsat+hint", "cpsat", {"warm_start": True}),
                             ("milp", "milp", {})]
                runs.append(("quantile", "quantile", {"bits": (2, 4, 8),
                                                      "shares": (0.2, 0.4, 0.4)}))
                results = []
                for label, backend, opts in runs:
                    reps = args.repeat if backend == "lagrange" else 1
                    res_list = [solve(problem, backend, time_limit=args.time_limit, **opts)
                                for _ in range(reps)]
                    res = sorted(res_list, key=lambda r: r.seconds)[len(res_list) // 2]
                    results.append((label, res))
                best_bound = max((r.bound for _, r in results if r.bound is not None),
                                 default=None)
                for label, res in results:
                    excess = (None if res.objective is None or best_bound is None
                              else (res.objective - best_bound) / abs(res.objective))
                    row = {"model": name, "granularity": granularity, "units": free, "G": G,
                           "backend": label, "seconds": res.seconds, "status": res.status,
                           "gap": res.gap, "excess": excess, "objective": res.objective,
                           "bound": res.bound}
                    rows.append(row)
                    gap = "-" if res.gap is None else f"{res.gap:.1e}"
                    exc = "-" if excess is None else f"{excess:.1e}"
                    print(f"{name:<22} {granularity:<7} {free:>6} {G:>2} {label:<14} "
                          f"{res.seconds:>8.3f} {res.status:<9} {gap:>9} {exc:>9}", flush=True)
    ladders = [] if args.quick else ladder_rows(args.time_limit)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"solves": rows, "ladders": ladders}, f, indent=1)
    head = [r for r in rows if r["model"] == "resnet50" and r["granularity"] == "channel"
            and r["G"] == 6 and r["backend"] == "lagrange"]
    if head:
        r = head[0]
        print(f"\nheadline: lagrange on ResNet50 per channel ({r['units']} units, G=6, K=5): "
              f"{r['seconds']:.3f} s, certified gap {r['gap']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
