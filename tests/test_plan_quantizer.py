"""Plans record their quantizer; the library and the CLI apply it unless told otherwise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fqopt
from fqopt.cli import main
from fqopt.errors import UserError
from fqopt.plan import AllocationPlan
from fqopt.units import discover_units
from tests.fixtures import expect_user_error, random_weight_run


@pytest.fixture(scope="module")
def rand_run(tmp_path_factory):
    """A run folder with an untrained (random) model: enough to apply and evaluate plans."""
    return random_weight_run(tmp_path_factory.mktemp("runs") / "rq")


def _plan(run, quantizer="mse", bits=3):
    model = run.model()
    return AllocationPlan.uniform(discover_units(model, "layer"), bits, model=run.model_name,
                                  quantizer=quantizer)


def _one_line(capsys, argv, *needles):
    return expect_user_error(capsys, argv, *needles)


# ------------------------------------------------------------------------------ library
def test_plan_json_records_the_quantizer_and_old_plans_load_as_maxabs(rand_run, tmp_path):
    plan = _plan(rand_run, "mse")
    plan.save(tmp_path / "p.json")
    d = json.loads((tmp_path / "p.json").read_text())
    assert d["quantizer"] == "mse" and d["schema"] == "fqopt.plan/1"
    assert AllocationPlan.load(tmp_path / "p.json").quantizer == "mse"
    del d["quantizer"]  # a plan written before the field existed
    (tmp_path / "old.json").write_text(json.dumps(d))
    assert AllocationPlan.load(tmp_path / "old.json").quantizer == "maxabs"
    d["quantizer"] = "lsq"
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(UserError, match=r"bad\.json.*'lsq' is not a known quantizer.*maxabs"):
        AllocationPlan.load(tmp_path / "bad.json")
    with pytest.raises(UserError, match="not a known quantizer"):
        _plan(rand_run, "nosuch")


def test_solver_plans_record_the_quantizer():
    from fqopt.sensitivity import SensitivityTable
    from fqopt.solvers import AllocationProblem, solve

    rng = np.random.default_rng(0)
    table = SensitivityTable(costs=rng.random((4, 2, 2)), bits=[4, 8], sizes=[9] * 4,
                             units=["a", "b", "c", "d"], groups=["g0", "g1"],
                             group_counts=[3, 3], meta={"quantizer": "mse", "model": "m"})
    res = solve(AllocationProblem.from_table(table, budget=6), "exhaustive")
    assert res.to_plan(table).quantizer == "mse"               # the table's quantizer
    assert res.to_plan(table, quantizer="maxabs").quantizer == "maxabs"
    table.meta.pop("quantizer")
    assert res.to_plan(table).quantizer == "maxabs"


def test_quantized_applies_the_plans_quantizer_by_default(rand_run):
    model = rand_run.model()
    mse, maxabs = _plan(rand_run, "mse", 2), _plan(rand_run, "maxabs", 2)
    own = fqopt.apply.quantized_weights(model, mse)
    explicit = fqopt.apply.quantized_weights(model, mse, method="mse")
    other = fqopt.apply.quantized_weights(model, maxabs)
    assert all(torch.equal(own[k], explicit[k]) for k in own)
    assert any(not torch.equal(own[k], other[k]) for k in own)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad(), fqopt.quantized(model, mse):
        a = model(x)
    with torch.no_grad(), fqopt.quantized(model, maxabs, method="mse"):  # explicit override
        b = model(x)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------- CLI
def test_evaluate_uses_the_plans_quantizer_and_refuses_a_contradiction(rand_run, tmp_path,
                                                                        capsys):
    d = rand_run.path
    _plan(rand_run, "mse").save(tmp_path / "pm.json")
    reports = rand_run.reports_dir
    assert main(["evaluate", "--run", str(d), "--plan", str(tmp_path / "pm.json"),
                 "--format", "json"]) == 0
    own = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--run", str(d), "--plan", str(tmp_path / "pm.json"),
                 "--quantizer", "mse", "--format", "json", "--out",
                 str(tmp_path / "explicit.json")]) == 0
    assert json.loads(capsys.readouterr().out) == own
    before = sorted(p.name for p in reports.iterdir())
    _one_line(capsys, ["evaluate", "--run", d, "--plan", tmp_path / "pm.json", "--quantizer",
                       "maxabs"], "--quantizer maxabs contradicts plan", "pm.json",
              "records quantizer mse", "--override-quantizer")
    assert sorted(p.name for p in reports.iterdir()) == before
    _one_line(capsys, ["evaluate", "--run", d, "--uniform", "4", "--quantizer", "lsq"],
              "--quantizer", "'lsq'", "maxabs")
    # an explicit override is said on stderr and written under its own name
    assert main(["evaluate", "--run", str(d), "--plan", str(tmp_path / "pm.json"),
                 "--quantizer", "maxabs", "--override-quantizer", "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert "override" in err and "maxabs" in err and "mse" in err
    assert (reports / "eval_pm-maxabs_test.json").is_file()
    assert json.loads(out) != own


def test_export_uses_the_plans_quantizer(rand_run, tmp_path, capsys):
    from fqopt.packed import read_export

    _plan(rand_run, "mse").save(tmp_path / "pm.json")
    out = tmp_path / "pm.safetensors"
    assert main(["export", "--run", str(rand_run.path), "--plan", str(tmp_path / "pm.json"),
                 "--out", str(out), "--format", "json"]) == 0
    capsys.readouterr()
    assert read_export(out).quantizer == "mse"
    _one_line(capsys, ["export", "--run", rand_run.path, "--plan", tmp_path / "pm.json",
                       "--out", tmp_path / "x.safetensors", "--quantizer", "maxabs"],
              "contradicts plan", "records quantizer mse")
    assert not (tmp_path / "x.safetensors").exists()


def test_refine_checks_quantizer_and_solver_before_training(rand_run, tmp_path, capsys):
    _plan(rand_run, "mse", 4).save(tmp_path / "pm.json")
    out = tmp_path / "ref"
    _one_line(capsys, ["refine", "--run", rand_run.path, "--plan", tmp_path / "pm.json",
                       "--quantizer", "maxabs", "--out", out], "contradicts plan", "mse")
    _one_line(capsys, ["refine", "--run", rand_run.path, "--plan", tmp_path / "pm.json",
                       "--solver", "nosuch", "--out", out], "unknown solver 'nosuch'",
              "lagrange")
    assert not out.exists()  # no baq_state.pt, nothing trained
    with pytest.raises(UserError, match="unknown solver 'nosuch'"):
        fqopt.refine(rand_run, tmp_path / "pm.json", solver="nosuch", out_dir=out)
    assert not out.exists()
