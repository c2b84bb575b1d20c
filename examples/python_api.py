"""The fqopt pipeline from Python, step by step, on the embedded synthderm default.

    .venv/bin/python examples/python_api.py [RUN_DIR] [--quick]

1. trains the FP baseline if RUN_DIR (default runs/example) has none;
2. profiles per-group sensitivity (``fqopt.profile``);
3. solves a worst-group allocation at 4 average bits with the certified ``lagrange`` solver;
4. compares it on the test split with uniform 4-bit quantization (``fqopt.evaluate``);
5. applies it in place with ``fqopt.quantized`` (weights swapped, then restored) and checks
   that the model is back to full precision afterwards;
6. exports packed low-bit weights (``fqopt.export``), reloads them (``fqopt.load_quantized``)
   and checks that the reloaded model predicts what the fake-quantized model predicts.

``--quick`` (the test suite's setting) uses a small dataset, few epochs and a small calibration
set: the steps are the same, the numbers mean little.
"""

import sys
from pathlib import Path

import torch

import fqopt
from fqopt import solvers
from fqopt.plan import AllocationPlan
from fqopt.runs import Run
from fqopt.training import TrainConfig
from fqopt.units import discover_units

args = [a for a in sys.argv[1:] if not a.startswith("--")]
quick = "--quick" in sys.argv
run_dir = Path(args[0] if args else "runs/example")

# 1. the FP baseline
try:
    run = Run.open(run_dir)
except fqopt.UserError:
    options = {"n": 900, "image_size": 24} if quick else {}
    run = Run.create(run_dir, dataset="synthderm", dataset_options=options, seed=0)
if not run.has_model():
    fqopt.train(run, TrainConfig(epochs=2 if quick else 15, seed=0))
model, data = run.model(), run.dataset()

# 2. per-group sensitivity: costs[unit, group, bit-width]
table = fqopt.profile(model, data, "train", method="fisher", granularity="channel",
                      calib=128 if quick else 1024, model_name=run.model_name)
print(f"profiled {len(table.units)} units × {len(table.groups)} groups × bits "
      f"{[int(b) for b in table.bits]}")

# 3. a worst-group allocation at 4 average bits, with a certified gap
problem = solvers.AllocationProblem.from_table(table, budget=4.0, objective="worst")
result = solvers.solve(problem, backend="lagrange")
print(result)  # status, objective, certified gap, seconds
plan = result.to_plan(model=run.model_name)
plan.save(run.path / "example-plan.json")

# 4. test split: FP32, uniform 4-bit, the plan
uniform4 = AllocationPlan.uniform(discover_units(model, "channel"), 4, model=run.model_name)
for name, p in [("fp32", None), ("uniform 4-bit", uniform4), ("fqopt worst @4", plan)]:
    rep = fqopt.evaluate(model, data, "test", plan=p)
    bits = "32" if p is None else f"{p.avg_bits:.2f}"
    print(f"{name:>15}: avg bits {bits:>5}  avg_acc {rep.avg_acc:.3f}  "
          f"worst_acc {rep.worst_acc:.3f} ({rep.worst_group})")

# 5. the plan applied in place, then the FP weights restored
x, _, _ = data.get_batch(data.split("test")[:16])
model.eval()
with torch.no_grad():
    fp_logits = model(x)
    with fqopt.quantized(model, plan):
        fake_logits = model(x)
    assert torch.equal(model(x), fp_logits), "quantized() must restore the FP weights"
print(f"fqopt.quantized: logits moved by up to {float((fake_logits - fp_logits).abs().max()):.4f}"
      " under the plan; FP weights restored afterwards")

# 6. packed export, reload, same predictions as the fake-quantized model
out = run.path / "example.safetensors"
info = fqopt.export(model, plan, out, model_name=run.model_name, num_classes=run.num_classes,
                    image_size=run.image_size, force=True)
deployed = fqopt.load_quantized(out)
with torch.no_grad():
    reloaded = deployed(x)
assert torch.equal(reloaded.argmax(1), fake_logits.argmax(1)), "reloaded predictions differ"
print(f"exported {out} ({info.file_bytes:,} B for a {plan.size_bytes:,} B plan); reloaded: "
      f"max |logit difference| {float((reloaded - fake_logits).abs().max()):.2e}")
