"""The fqopt pipeline from Python, step by step, on the embedded synthderm default.

    .venv/bin/python examples/python_api.py [RUN_DIR]

Trains the FP baseline if RUN_DIR (default runs/example) has none, profiles per-group
sensitivity, solves a worst-group allocation at 4 average bits with the certified ``lagrange``
solver, and compares it on the test split with uniform 4-bit quantization.
"""

import sys

import fqopt
from fqopt import solvers
from fqopt.plan import AllocationPlan
from fqopt.runs import Run
from fqopt.training import TrainConfig
from fqopt.units import discover_units

run_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/example"
try:
    run = Run.open(run_dir)
except fqopt.UserError:
    run = Run.create(run_dir, dataset="synthderm")
if not run.has_model():
    fqopt.train(run, TrainConfig(epochs=15))

model, data = run.model(), run.dataset()
table = fqopt.profile(model, data, "train", method="fisher", granularity="channel", calib=1024,
                      model_name=run.model_name)
problem = solvers.AllocationProblem.from_table(table, budget=4.0, objective="worst")
result = solvers.solve(problem, backend="lagrange")
print(result)  # status, objective, certified gap, seconds
plan = result.to_plan(table, model=run.model_name)

uniform4 = AllocationPlan.uniform(discover_units(model, "channel"), 4, model=run.model_name)
for name, p in [("fp32", None), ("uniform 4-bit", uniform4), ("fqopt worst @4", plan)]:
    rep = fqopt.evaluate(model, data, "test", plan=p)
    bits = "32" if p is None else f"{p.avg_bits:.2f}"
    print(f"{name:>15}: avg bits {bits:>5}  avg_acc {rep.avg_acc:.3f}  "
          f"worst_acc {rep.worst_acc:.3f} ({rep.worst_group})")
