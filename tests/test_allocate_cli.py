"""``fqopt allocate``: plans written, summary printed, bad input -> one line and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fqopt.cli import main
from fqopt.plan import AllocationPlan
from fqopt.sensitivity import SensitivityTable, table_unit_set
from fqopt.solvers import AllocationProblem

BITS = np.array([2, 3, 4, 6, 8])
LAYERS = (("conv1", (8, 3, 3, 3)), ("layer1.conv", (16, 8, 3, 3)),
          ("layer2.conv", (16, 16, 1, 1)), ("fc", (10, 16)))


def make_table(path, costs=None, **meta_extra):
    rng = np.random.default_rng(0)
    units, sizes = [], []
    for name, shape in LAYERS:
        n, per = shape[0], int(np.prod(shape)) // shape[0]
        units += [f"{name}[{c}]" for c in range(n)]
        sizes += [per] * n
    sizes = np.array(sizes)
    if costs is None:
        costs = (sizes[:, None, None] * rng.lognormal(0, 1, (len(units), 3, 1))
                 * 4.0 ** -BITS.astype(float))
    meta = {"model": "tiny", "granularity": "channel", "method": "fisher",
            "shapes": {n: list(s) for n, s in LAYERS}, "pinned": {"conv1": 8, "fc": 8},
            "float_params": 50, **meta_extra}
    table = SensitivityTable(costs=costs, bits=BITS, sizes=sizes, units=units,
                             groups=["light", "medium", "dark"],
                             group_counts=np.array([50, 30, 20]), meta=meta)
    table.save(path)
    return table


@pytest.fixture
def table_path(tmp_path):
    path = tmp_path / "sensitivity.npz"
    make_table(path)
    return path


def run(argv, capsys):
    rc = main(["allocate", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_single_budget_writes_a_checked_plan(table_path, tmp_path, capsys):
    out_path = tmp_path / "plan.json"
    rc, out, err = run(["--table", table_path, "--budget", "4", "--out", out_path,
                        "--format", "json"], capsys)
    assert rc == 0, err
    summary = json.loads(out)
    assert {"status", "objective", "bound", "gap", "seconds", "backend"} <= set(summary)
    plan = AllocationPlan.load(out_path)
    table = SensitivityTable.load(table_path)
    units = table_unit_set(table)
    assert plan.model == "tiny" and plan.avg_bits <= 4.0 + 1e-12
    assert plan.budget == {"kind": "avg_bits", "value": 4.0}
    assert plan.objective == "worst" and plan.meta["method"] == "fisher"
    # the objective printed is the one recomputed from the table for the written plan
    problem = AllocationProblem.from_table(table, budget=4.0)
    bits = plan.unit_bits(units)
    assert summary["objective"] == pytest.approx(problem.evaluate(bits), rel=1e-12)
    assert plan.solver["objective"] == pytest.approx(summary["objective"], rel=1e-12)
    assert plan.predicted == pytest.approx(
        dict(zip(table.groups, problem.group_costs(bits))), rel=1e-12)
    assert all(b == 8 for b in plan.assignments["conv1"])   # the table's pins hold


def test_table_format_and_overwrite_rule(table_path, tmp_path, capsys):
    out_path = tmp_path / "plan.json"
    rc, out, err = run(["--table", table_path, "--budget", "4.5", "--out", out_path,
                        "--objective", "cvar:0.5", "--solver", "cpsat"], capsys)
    assert rc == 0, err
    assert "optimal" in out and "cvar:0.5" in out
    rc, out, err = run(["--table", table_path, "--budget", "4.5", "--out", out_path], capsys)
    assert rc == 2 and "--force" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run(["--table", table_path, "--budget", "4.5", "--out", out_path, "--force"],
                     capsys)
    assert rc == 0, err


def test_ladder_writes_one_plan_per_budget(table_path, tmp_path, capsys):
    folder = tmp_path / "plans"
    rc, out, err = run(["--table", table_path, "--budget", "3.5:5:0.5", "--out", folder,
                        "--solver", "lagrange", "--format", "json"], capsys)
    assert rc == 0, err
    records = json.loads(out)
    assert [r["budget"] for r in records] == [3.5, 4.0, 4.5, 5.0]
    for r in records:
        plan = AllocationPlan.load(r["plan"])
        assert plan.avg_bits <= r["budget"] + 1e-12
        assert plan.solver["backend"] == "lagrange"
    assert sorted(p.name for p in folder.iterdir()) == [
        "plan_avg_bits_3.5.json", "plan_avg_bits_4.5.json", "plan_avg_bits_4.json",
        "plan_avg_bits_5.json"]
    pattern = tmp_path / "sweep" / "worst_{budget}.json"
    rc, _, err = run(["--table", table_path, "--budget", "4,6", "--out", pattern], capsys)
    assert rc == 0, err
    assert (tmp_path / "sweep" / "worst_4.json").is_file()
    assert (tmp_path / "sweep" / "worst_6.json").is_file()


def test_pin_override_and_budget_kinds(table_path, tmp_path, capsys):
    out_path = tmp_path / "p.json"
    # a pin list replaces the table's pins: fc at 6 bits, conv1 free
    rc, _, err = run(["--table", table_path, "--budget", "3", "--pin", "fc=6",
                      "--out", out_path], capsys)
    assert rc == 0, err
    plan = AllocationPlan.load(out_path)
    assert set(plan.assignments["fc"]) == {6} and plan.avg_bits <= 3.0
    assert set(plan.assignments["conv1"]) != {8}
    rc, _, err = run(["--table", table_path, "--budget", "1400", "--budget-kind", "size_bytes",
                      "--out", tmp_path / "s.json"], capsys)
    assert rc == 0, err
    assert AllocationPlan.load(tmp_path / "s.json").size_bytes <= 1400


def _bad_npz(path, **overrides):
    table = make_table(path)
    arrays = dict(costs=table.costs, bits=table.bits, sizes=table.sizes,
                  units=np.array(table.units), groups=np.array(table.groups),
                  group_counts=table.group_counts, meta=np.array(json.dumps(table.meta)))
    arrays.update(overrides)
    np.savez(path, **arrays)


@pytest.mark.parametrize("case, fragment", [
    ("nan", "cost is NaN for unit"),
    ("shape", "'sizes' has shape"),
    ("objective", "unknown objective 'fairest'"),
    ("solver", "unknown solver 'gurobi'"),
    ("budget", "infeasible: the pins, ties and minimum bits need at least"),
    ("ladder", "--budget '3:x:1'"),
    ("missing", "does not exist"),
    ("kind", "Invalid value for '--budget-kind'"),
    ("time", "--time-limit must be positive"),
    ("pin", "neither a unit nor a layer"),
])
def test_bad_input_is_one_line_and_exit_2(case, fragment, tmp_path, capsys):
    path = tmp_path / "t.npz"
    make_table(path)
    args = {"--budget": "4", "--out": tmp_path / "p.json"}
    extra = []
    if case == "nan":
        costs = make_table(path).costs.copy()
        costs[5, 1, 2] = np.nan
        _bad_npz(path, costs=costs)
    elif case == "shape":
        _bad_npz(path, sizes=np.ones(3, dtype=np.int64))
    elif case == "objective":
        extra = ["--objective", "fairest"]
    elif case == "solver":
        extra = ["--solver", "gurobi"]
    elif case == "budget":
        args["--budget"] = "2"
    elif case == "ladder":
        args["--budget"] = "3:x:1"
    elif case == "missing":
        path = tmp_path / "nope.npz"
    elif case == "kind":
        extra = ["--budget-kind", "flops"]
    elif case == "time":
        extra = ["--time-limit", "0"]
    elif case == "pin":
        extra = ["--pin", "layer9=4"]
    argv = ["--table", path, *[x for kv in args.items() for x in kv], *extra]
    rc, out, err = run(argv, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert fragment in lines[0]
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "p.json").exists()


def test_impossible_budget_names_the_smallest_feasible(table_path, tmp_path, capsys):
    table = SensitivityTable.load(table_path)
    least = AllocationProblem.from_table(table, budget=8).min_budget()
    rc, _, err = run(["--table", table_path, "--budget", "2", "--out", tmp_path / "p.json"],
                     capsys)
    assert rc == 2 and f"{least:.6g}" in err


def test_json_stdout_stays_clean_with_milp(table_path, tmp_path):
    """HiGHS prints a banner from C on its first instance; stdout must stay parseable."""
    out = subprocess.run([sys.executable, "-m", "fqopt", "allocate", "--table", str(table_path),
                          "--budget", "4", "--solver", "milp", "--format", "json",
                          "--out", str(tmp_path / "m.json")], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "optimal"
    assert "HiGHS" not in out.stdout
