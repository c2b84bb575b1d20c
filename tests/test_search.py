"""fqopt.search: spaces, plan builders, the weight bank, the study loop (seeds, slots, resume,
interruption, stale trials), direct mode, errors and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from fqopt.errors import UserError
from tests.fixtures import copy_trained_run

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

METHODS = ("fisher", "gradient", "grape")



@pytest.fixture(scope="module")
def srun(tiny_run, tmp_path_factory):
    """A private copy of the tiny run with channel tables for the three methods."""
    from fqopt.search._pipeline import ensure_tables

    run = copy_trained_run(tiny_run, tmp_path_factory.mktemp("search") / "run")
    tables, _ = ensure_tables(run, list(METHODS), "channel", calib=128)
    return run, tables


@pytest.fixture(scope="module")
def layer_tables(srun):
    from fqopt.search._pipeline import ensure_tables

    run, _ = srun
    tables, _ = ensure_tables(run, ["fisher"], "layer", calib=128)
    return tables


def _fresh(srun, tmp_path):
    """A fresh copy of the module's run (own study.db), sharing the profiled tables."""
    from fqopt.runs import Run

    run, tables = srun
    dest = tmp_path / "run"
    shutil.copytree(run.path, dest)
    (dest / "study.db").unlink(missing_ok=True)
    return Run.open(dest), tables


# --------------------------------------------------------------------------- spaces
def test_search_space_grid_and_snap():
    from optuna.distributions import FloatDistribution

    from fqopt.search import SearchSpace
    from fqopt.search._space import parse_budget_range

    space = SearchSpace(budget_range=(2.5, 7.02), methods=("fisher", "grape"))
    d = space.distributions()
    assert d["budget"].low == 2.5 and d["budget"].high == pytest.approx(7.0)  # onto the grid
    assert isinstance(d["lambda"], FloatDistribution) and d["lambda"].high == 1.0
    assert list(d["method"].choices) == ["fisher", "grape"]
    p = space.snap(8.0, 1.3, "gradient", "nope")
    # an unknown quantizer snaps to the space's first (the default space has only mse)
    assert p == {"budget": pytest.approx(7.0), "lambda": 1.0, "method": "fisher",
                 "quantizer": "mse"}
    p = space.snap(3.333, 0.26, "grape", "mse")
    assert p["budget"] == pytest.approx(3.35) and p["lambda"] == pytest.approx(0.25)
    for name, v in p.items():  # snapped parameters lie inside the distributions
        assert d[name]._contains(d[name].to_internal_repr(v))
    assert parse_budget_range("2.5:7") == (2.5, 7.0)
    for bad in ("7:2.5", "1:4", "x", "2:9"):
        with pytest.raises(UserError, match="budget-range"):
            parse_budget_range(bad)
    with pytest.raises(UserError, match="quantizers"):
        SearchSpace(quantizers=("int4",))


# --------------------------------------------------------------------------- weight bank
@pytest.mark.parametrize("quantizer", ["maxabs", "mse"])
def test_weight_bank_is_bit_identical_to_apply(srun, quantizer):
    """Indexing precomputed per-bit copies gives exactly fqopt.apply.quantized's weights, and
    restore gives back the FP weights bit for bit."""
    from fqopt.apply import quantized
    from fqopt.plan import AllocationPlan
    from fqopt.search._trial import WeightBank
    from fqopt.units import discover_units, quantizable_layers

    run, _ = srun
    model = run.model()
    units = discover_units(model, "channel")
    rng = np.random.default_rng(1)
    plan = AllocationPlan.from_unit_bits(units, rng.choice([2, 3, 4, 6, 8], len(units)),
                                         model=run.model_name)
    layers = dict(quantizable_layers(model))
    original = {n: m.weight.detach().clone() for n, m in layers.items()}
    with quantized(model, plan, method=quantizer):
        expected = {n: m.weight.detach().clone() for n, m in layers.items()}
    bank = WeightBank(model, [2, 3, 4, 6, 8])
    assert bank.covers(plan)
    bank.apply(plan, quantizer)
    for n, m in layers.items():
        assert torch.equal(m.weight, expected[n]), n
    bank.restore()
    for n, m in layers.items():
        assert torch.equal(m.weight, original[n]), n


# --------------------------------------------------------------------------- plan builders
def test_plan_builders(srun):
    from fqopt.search import PlanMaker, build_plan
    from fqopt.search._plans import blend_objective, pinned_min_budget

    run, tables = srun
    maker = PlanMaker(tables, model_name=run.model_name)
    assert maker.backend == "lagrange" and maker.granularity == "channel"
    params = {"budget": 3.5, "lambda": 0.4, "method": "fisher", "quantizer": "maxabs"}
    plan = build_plan(maker, "solver", params)
    assert plan.avg_bits <= 3.5 + 1e-9 and plan.avg_bits > 3.3
    assert plan.objective == "blend:0.4" and plan.granularity == "channel"
    # pins are respected: stem and head at 8 bits
    lb = plan.layer_bits()
    for layer, b in maker.units.pinned.items():
        assert set(lb[layer].tolist()) == {b}
    # the objective override (HAWQ-style mean) and budgets below the pins' minimum: the pins
    # give way to 4 bits, then to the smallest (recorded in the plan), never the budget
    strict = pinned_min_budget(tables)
    pinned = maker.units.pinned
    assert maker.min_budget() == pytest.approx(2.0) and strict > 2.0
    low = build_plan(maker, "solver", {**params, "budget": 2.0}, {"objective": "worst"})
    assert low.avg_bits <= 2.0 + 1e-9
    assert low.meta["pins_relaxed"] == dict.fromkeys(pinned, 2)
    floor = maker.problem("fisher", "worst", 8.0, relax="floor").min_budget()
    assert 2.0 < floor < strict
    assert strict == pytest.approx(maker.problem("fisher", "worst", 8.0).min_budget())
    mid = build_plan(maker, "solver", {**params, "budget": (floor + strict) / 2},
                     {"objective": "worst"})
    assert mid.avg_bits <= (floor + strict) / 2 + 1e-9
    assert mid.meta["pins_relaxed"] == dict.fromkeys(pinned, 4)
    assert all(mid.layer_bits()[n].min() >= 4 for n in pinned)
    assert "pins_relaxed" not in plan.meta
    with pytest.raises(UserError, match="relax must be one of"):
        maker.problem("fisher", "worst", 3.0, relax="some")
    mean = build_plan(maker, "solver", params, {"objective": "mean", "budget": 4.0})
    assert mean.objective == "mean" and mean.avg_bits <= 4.0 + 1e-9
    uni = build_plan(maker, "uniform", params, {"bits": 4})
    free = [n for n in lb if n not in maker.units.pinned]
    assert all(set(uni.layer_bits()[n].tolist()) == {4} for n in free)
    # FairQuant: its own shares use bits 2/4/8 only; matched to a budget, it meets it
    fq = build_plan(maker, "quantile", {**params, "method": "gradient"}, {"combine": "max"})
    used = {int(b) for v in fq.layer_bits().values() for b in v}
    assert used <= {2, 4, 8} and fq.objective == "fairquant:gradient+max"
    fq4 = build_plan(maker, "quantile", {**params, "method": "grape"},
                     {"combine": "balanced", "budget": 4.0})
    assert fq4.avg_bits <= 4.0 + 1e-9 and fq4.avg_bits > 3.8
    assert [blend_objective(x) for x in (0.0, 0.5, 1.0)] == ["balanced", "blend:0.5", "worst"]
    with pytest.raises(UserError, match="no sensitivity table"):
        build_plan(maker, "solver", {**params, "method": "hutchinson"})
    with pytest.raises(UserError, match="unknown plan builder"):
        build_plan(maker, "magic", params)


def test_plan_maker_rejects_tables_of_two_models(srun, layer_tables):
    from fqopt.search import PlanMaker

    run, tables = srun
    with pytest.raises(UserError, match="disagree"):
        PlanMaker({"fisher": tables["fisher"], "grape": layer_tables["fisher"]},
                  model_name=run.model_name)


def test_default_seeds(srun):
    from fqopt.search import PlanMaker, SearchSpace, default_seeds

    run, tables = srun
    maker = PlanMaker(tables, model_name=run.model_name)
    space = SearchSpace(methods=METHODS)
    seeds = default_seeds(space, maker)
    keys = [s.key for s in seeds]
    assert len(keys) == len(set(keys))
    assert {"uniform:3", "uniform:4", "uniform:6", "worst@4", "fairquant:gradient+max",
            "fairquant:grape+balanced@4", "mean@4"} <= set(keys)
    # uniform 2-bit and 8-bit lie outside the sampled budgets (2.5-7): not trials (the test
    # stage evaluates them beside the study), so no seed carries a clipped placeholder budget
    assert not {"uniform:2", "uniform:8"} & set(keys)
    dists = space.distributions()
    for s in seeds:
        assert set(s.params) == set(dists)
        for name, v in s.params.items():
            assert dists[name]._contains(dists[name].to_internal_repr(v)), (s.key, name)
    # the parameters describe what runs: a plan built without a budget records its real bits
    from fqopt.search import build_plan

    by_key = {s.key: s for s in seeds}
    for key in ("uniform:4", "fairquant:gradient+max", "fairquant:grape+balanced"):
        s = by_key[key]
        plan = build_plan(maker, s.builder, s.params, s.options)
        assert abs(s.params["budget"] - plan.avg_bits) <= space.budget_step / 2 + 1e-9, key
    assert by_key["fairquant:gradient+max"].params["method"] == "gradient"
    assert by_key["fairquant:grape+balanced"].params["lambda"] == 0.0
    assert by_key["worst@4"].params["budget"] == 4.0 and by_key["worst@4"].params["lambda"] == 1
    assert by_key["mean@4"].params["budget"] == 4.0
    # without the gradient table there is no gradient+max baseline (its scores are missing)
    fewer = default_seeds(SearchSpace(methods=("fisher", "grape")), maker)
    assert not [s for s in fewer if "gradient" in s.key]


def test_default_seeds_at_the_recommendation_budget(srun):
    """A budget between the ladder's rungs gets fqopt's, FairQuant's and the HAWQ-style plan
    built for exactly that budget; the default budget (4) adds nothing new."""
    from fqopt.search import PlanMaker, SearchSpace, build_plan, default_seeds

    run, tables = srun
    maker = PlanMaker(tables, model_name=run.model_name)
    space = SearchSpace(methods=METHODS, budget_range=(2.25, 7.0))
    plain = {s.key for s in default_seeds(space, maker)}
    assert plain == {s.key for s in default_seeds(space, maker, budget=4.0)}
    seeds = {s.key: s for s in default_seeds(space, maker, budget=2.75)}
    new = set(seeds) - plain
    assert new == {"worst@2.75", "mean@2.75", "fairquant:gradient+max@2.75",
                   "fairquant:grape+balanced@2.75"}
    for key in sorted(new):
        plan = build_plan(maker, seeds[key].builder, seeds[key].params, seeds[key].options)
        assert plan.avg_bits <= 2.75 + 1e-9, key
    assert seeds["worst@2.75"].params["budget"] == 2.75
    # several budgets (a benchmark's): each gets its own three plans, none twice
    many = [s.key for s in default_seeds(space, maker, budget=(2.25, 2.75, 4.0))]
    assert len(many) == len(set(many))
    assert set(many) - plain == new | {"worst@2.25", "mean@2.25", "fairquant:gradient+max@2.25",
                                       "fairquant:grape+balanced@2.25"}


# --------------------------------------------------------------------------- the study
def test_run_study_records_plans_and_reports(srun, tmp_path):
    """Directions, metric names, seeds first and once, and every trial's stored plan and
    report reproduce when the plan is applied again with fqopt.apply/evaluate."""
    from fqopt.evaluation import evaluate
    from fqopt.plan import AllocationPlan
    from fqopt.search import pareto_trials, run as search_run
    from fqopt.search._seeds import ATTR_SEED

    run, tables = _fresh(srun, tmp_path)
    study = search_run(run, tables, n_trials=20, seed=0)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["avg_acc", "worst_acc", "avg_bits"]
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 20 and len(study.trials) == 20
    seeded = [t for t in trials if t.user_attrs.get(ATTR_SEED)]
    assert len(seeded) == 16 and len({t.user_attrs[ATTR_SEED] for t in seeded}) == 16
    assert max(t.number for t in seeded) < min(t.number for t in trials if t not in seeded)
    model, ds = run.model(), run.dataset()
    for t in trials:
        plan = AllocationPlan.from_dict(t.user_attrs["plan"])
        rep = t.user_attrs["report"]
        assert t.values[0] == rep["avg_acc"] and t.values[1] == rep["worst_acc"]
        assert t.values[2] == pytest.approx(plan.avg_bits)
        assert set(t.user_attrs["seconds"]) == {"solve", "apply", "evaluate", "restore"}
    for t in trials[1::8]:  # an independent evaluation of a few stored plans
        plan = AllocationPlan.from_dict(t.user_attrs["plan"])
        again = evaluate(model, ds, "search", plan=plan, quantizer=t.params["quantizer"])
        assert again.avg_acc == pytest.approx(t.values[0], abs=1e-12)
        assert again.worst_acc == pytest.approx(t.values[1], abs=1e-12)
    front = pareto_trials(study)
    assert front and [t.values[2] for t in front] == sorted(t.values[2] for t in front)
    numbers = {t.number for t in front}
    for t in trials:  # nothing off the front dominates a plan on it
        if t.number in numbers:
            continue
        assert any(f.values[0] >= t.values[0] and f.values[1] >= t.values[1]
                   and f.values[2] <= t.values[2] for f in front)


def test_resume_keeps_finished_trials(srun, tmp_path):
    from fqopt.search import run as search_run

    run, tables = _fresh(srun, tmp_path)
    first = search_run(run, tables, n_trials=5, seed=0)
    before = {t.number: (t.params, t.values, t.datetime_complete) for t in first.trials}
    assert len(before) == 5
    study = search_run(run, tables, n_trials=10, seed=0)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 10 and len(study.trials) == 10
    for t in done:
        if t.number in before:
            assert (t.params, t.values, t.datetime_complete) == before[t.number]
    # asking again for 10 runs nothing
    again = search_run(run, tables, n_trials=10, seed=0)
    assert len(again.trials) == 10


def test_interrupted_trial_is_rerun(srun, tmp_path, monkeypatch):
    """Ctrl-C inside a trial: the trial fails, finished ones stay, a resumed search runs the
    lost seed again (once) and fills the study up to the target."""
    from fqopt.search import run as search_run
    from fqopt.search._seeds import ATTR_SEED
    from fqopt.search._trial import SplitEvaluator

    run, tables = _fresh(srun, tmp_path)
    real = SplitEvaluator.report
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(SplitEvaluator, "report", flaky)
    with pytest.raises(KeyboardInterrupt):
        search_run(run, tables, n_trials=8, seed=0)
    monkeypatch.setattr(SplitEvaluator, "report", real)
    import optuna as _o

    study = _o.load_study(study_name="fqopt-test_resnet-channel",
                          storage=f"sqlite:///{run.path / 'study.db'}")
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 3 and states.count(TrialState.FAIL) == 1
    lost = next(t for t in study.trials if t.state == TrialState.FAIL).user_attrs[ATTR_SEED]
    study = search_run(run, tables, n_trials=8, seed=0)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 8
    assert [t.user_attrs.get(ATTR_SEED) for t in done].count(lost) == 1


def test_stale_running_trial_is_failed_and_replaced(srun, tmp_path, monkeypatch):
    """A trial left RUNNING by a killed process: its heartbeat stops, the next worker marks
    it failed after the grace period and completes the study without it."""
    from fqopt.search import _storage
    from fqopt.search import run as search_run

    monkeypatch.setattr(_storage, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(_storage, "GRACE_PERIOD", 2)
    run, tables = _fresh(srun, tmp_path)
    search_run(run, tables, n_trials=3, seed=0)
    storage = _storage.open_storage(f"sqlite:///{run.path / 'study.db'}")
    study = optuna.load_study(study_name="fqopt-test_resnet-channel", storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zombie = study.ask()  # RUNNING, never told, no heartbeat thread: a killed worker
    storage.record_heartbeat(zombie._trial_id)
    t0 = time.monotonic()
    study = search_run(run, tables, n_trials=5, seed=0)
    states = {t.number: t.state for t in study.trials}
    assert states[zombie.number] == TrialState.FAIL
    assert sum(s == TrialState.COMPLETE for s in states.values()) == 5
    assert time.monotonic() - t0 < 60


def test_claim_slot_under_races():
    """At most n trials pass the slot check, even when workers ask at the same moment; a seed
    enqueued twice runs once."""
    from fqopt.search._seeds import ATTR_SEED
    from fqopt.search._trial import claim_slot

    study = optuna.create_study(directions=["maximize", "maximize", "minimize"])
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(values=[0.5, 0.4, 4.0]))
    a, b = study.ask(), study.ask()   # two workers racing for the last slot of 3
    assert claim_slot(a, 3) == "surplus" and claim_slot(b, 3) == "surplus"
    assert claim_slot(a, 4) is None and claim_slot(b, 4) is None  # room for both
    study.enqueue_trial({}, user_attrs={ATTR_SEED: "uniform:4"})
    study.enqueue_trial({}, user_attrs={ATTR_SEED: "uniform:4"})
    first, second = study.ask(), study.ask()
    assert first.number < second.number
    assert claim_slot(first, 10) is None
    assert claim_slot(second, 10) == "duplicate seed"
    # a waiting trial numbered below keeps its slot: a new trial created behind it by another
    # worker (ask() would pop the waiting one) cannot take it
    other = optuna.create_study(directions=["maximize", "maximize", "minimize"])
    other.add_trial(optuna.trial.create_trial(values=[0.5, 0.4, 4.0]))
    other.enqueue_trial({}, user_attrs={ATTR_SEED: "uniform:8"})
    trial_id = other._storage.create_new_trial(other._study_id)  # noqa: SLF001
    late = optuna.trial.Trial(other, trial_id)
    assert claim_slot(late, 2) == "surplus" and claim_slot(late, 3) is None


def test_direct_mode(srun, layer_tables, tmp_path):
    from fqopt.plan import AllocationPlan
    from fqopt.search import SearchSpace
    from fqopt.search import run as search_run
    from fqopt.search._trial import ATTR_CONSTRAINT

    run, _ = _fresh(srun, tmp_path)
    space = SearchSpace(budget_range=(3.0, 6.0), methods=("fisher",))
    study = search_run(run, layer_tables, n_trials=16, seed=0, direct=True, space=space,
                       population_size=4)
    assert study.study_name == "fqopt-test_resnet-layer-direct"
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 16
    pinned = {"conv1.0", "fc"}
    for t in trials:
        layers = {k[len("bits:"):] for k in t.params if k.startswith("bits:")}
        assert layers and not layers & pinned and "quantizer" in t.params
        plan = AllocationPlan.from_dict(t.user_attrs["plan"])
        assert plan.granularity == "layer"
        for layer in layers:
            assert plan.assignments[layer] == t.params[f"bits:{layer}"]
        c = t.user_attrs[ATTR_CONSTRAINT]
        assert c == pytest.approx([plan.avg_bits - 6.0, 3.0 - plan.avg_bits])
    with pytest.raises(UserError, match="granularity layer"):
        search_run(run, srun[1], n_trials=2, direct=True)


def test_tpe_sampler_and_unknown_sampler(srun, tmp_path):
    from fqopt.search import make_sampler
    from fqopt.search import run as search_run

    run, tables = _fresh(srun, tmp_path)
    study = search_run(run, tables, n_trials=4, sampler="tpe", seed=1, study_name="tpe",
                       seeds=False)
    assert isinstance(study.sampler, optuna.samplers.TPESampler)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    with pytest.raises(UserError, match="unknown sampler"):
        make_sampler("cmaes", seed=0)


# --------------------------------------------------------------------------- PipelineConfig
def test_pipeline_config_defaults_round_trip_and_overrides():
    from fqopt.search import PipelineConfig, TrainOptions
    from fqopt.search._study import DEFAULT_TRIALS
    from fqopt.search._verdict import DEFAULT_BUDGET

    default = PipelineConfig()
    assert default.n_trials == DEFAULT_TRIALS and default.budget == DEFAULT_BUDGET
    assert PipelineConfig(n_trials=None, budget=None) == default   # None means the default
    config = PipelineConfig(methods=["fisher"], quantizers=["maxabs", "mse"], direct=True,
                            budget_range=[3, 6], refine_mode="baq", n_trials=np.int64(7),
                            train=TrainOptions(samples=64, seed=2), artifacts=Path("arts"))
    assert config.granularity == "layer"   # direct mode chooses per-layer bits
    assert config.methods == ("fisher",) and config.budget_range == (3.0, 6.0)
    d = json.loads(json.dumps(config.to_dict()))
    assert d["schema"] == "fqopt.pipeline_config/1" and d["train"]["samples"] == 64
    back = PipelineConfig.from_dict(d)
    assert back == PipelineConfig.build(config, artifacts="arts")
    assert PipelineConfig.build(config, seed=5).seed == 5 and config.seed == 0
    with pytest.raises(UserError, match="schema"):
        PipelineConfig.from_dict({**d, "schema": "fqopt.pipeline_config/0"})


@pytest.mark.parametrize("options, message", [
    (dict(refine_mode="qat"), "unknown refine mode 'qat'; expected one of finetune, baq"),
    (dict(sampler="cmaes"), "unknown sampler 'cmaes'"),
    (dict(granularity="tensor"), "unknown granularity 'tensor'"),
    (dict(n_trials=0), "n_trials must be a positive integer"),
    (dict(refine_top=-1), "refine_top must be an integer ≥ 0"),
    (dict(budget=0), "budget must be a positive number"),
    (dict(budget_range="2.5:7"), "budget_range must be two numbers"),
    (dict(trials=10), r"unknown search option\(s\) \['trials'\]"),
])
def test_run_pipeline_refuses_bad_options_before_any_work(tmp_path, options, message):
    from fqopt.search import PipelineConfig, run_pipeline

    with pytest.raises(UserError, match=message):
        run_pipeline(tmp_path / "run", **options)
    with pytest.raises(UserError, match=message):
        run_pipeline(tmp_path / "run", PipelineConfig(), **options)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- bad input
def test_other_directions_and_other_run_are_refused(srun, tmp_path):
    import copy

    from fqopt.search import run as search_run

    run, tables = _fresh(srun, tmp_path)
    url = f"sqlite:///{tmp_path / 'other.db'}"
    optuna.create_study(storage=url, study_name="s", directions=["minimize"] * 3)
    with pytest.raises(UserError, match=r"directions \[minimize, minimize, minimize\].*"
                                        r"\[maximize, maximize, minimize\]"):
        search_run(run, tables, n_trials=2, storage=url, study_name="s")
    search_run(run, tables, n_trials=1, storage=url, study_name="mine")
    other = copy.copy(run)
    other.config = json.loads(json.dumps(run.config))
    other.config["model"]["name"] = "resnet18"
    with pytest.raises(UserError, match="model 'test_resnet'.*'resnet18'"):
        search_run(other, tables, n_trials=2, storage=url, study_name="mine")
    with pytest.raises(UserError, match="Optuna storage"):
        search_run(run, tables, n_trials=2,
                   storage="postgresql+psycopg://nobody@127.0.0.1:1/none")


def _cli(*args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "fqopt", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    """Run ``fqopt`` in this process (its entry point, exit codes and one-line errors)."""
    from fqopt.cli import main

    def call(*args):
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return _Result(code, out, err)

    return call


def test_cli_bad_input_is_one_line_exit_2(srun, tmp_path, cli):
    _cli = cli
    run, _ = _fresh(srun, tmp_path)
    cases = [
        ["search", "--run", str(run.path), "--storage",
         "postgresql+psycopg://nobody@127.0.0.1:1/none", "--trials", "2"],
        ["search", "--run", str(run.path), "--storage", "not-a-url"],
        ["search", "--run", str(run.path), "--budget-range", "9:1"],
        ["show", "--run", str(run.path)],
        ["report", "--run", str(tmp_path / "missing")],
    ]
    for args in cases:
        r = _cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in r.stderr, lines
    # a study of other directions, and a run folder of another model
    url = f"sqlite:///{tmp_path / 'o.db'}"
    optuna.create_study(storage=url, study_name="s", directions=["minimize"] * 3)
    r = _cli("search", "--run", str(run.path), "--storage", url, "--study", "s")
    assert r.returncode == 2 and "directions" in r.stderr
    other = tmp_path / "other"
    shutil.copytree(run.path, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model"]["name"] = "resnet18"
    (other / "config.json").write_text(json.dumps(cfg))
    from fqopt.search import run as search_run

    search_run(run, srun[1], n_trials=1, storage=url, study_name="mine")
    for cmd in ("search", "show"):
        r = _cli(cmd, "--run", str(other), "--storage", url, "--study", "mine")
        assert r.returncode == 2 and "'resnet18'" in r.stderr, r.stderr
        assert len([x for x in r.stderr.splitlines() if x.strip()]) == 1


@pytest.mark.slow
def test_cli_pipeline_sigint_then_resume(srun, tmp_path):
    """`fqopt search` end to end on the tiny run; Ctrl-C (SIGINT) mid-search exits 130 with
    finished trials kept; the same command again completes the study and writes the plans,
    the test-split results and the report."""
    run, _ = _fresh(srun, tmp_path)
    db = run.path / "study.db"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # far more trials than the resume asks for, so that the search is surely still running
    # when the signal comes (a trial of the tiny run takes a fraction of a second)
    args = [sys.executable, "-m", "fqopt", "search", "--run", str(run.path), "--trials", "1000",
            "--refine-top", "0", "--no-report"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True)
    deadline = time.monotonic() + 240
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if db.is_file():
            try:
                s = optuna.load_study(study_name="fqopt-test_resnet-channel",
                                      storage=f"sqlite:///{db}")
                done = len(s.get_trials(states=(TrialState.COMPLETE,)))
            except Exception:  # the study is being created
                continue
            if done >= 3:
                break
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err, (proc.returncode, err[-2000:])
    s = optuna.load_study(study_name="fqopt-test_resnet-channel", storage=f"sqlite:///{db}")
    kept = {t.number: t.values for t in s.get_trials(states=(TrialState.COMPLETE,))}
    assert 3 <= len(kept) < 40
    r = _cli("search", "--run", str(run.path), "--trials", "40", "--refine-top", "0",
             "--format", "json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["study"]["states"]["complete"] == 40
    s = optuna.load_study(study_name="fqopt-test_resnet-channel", storage=f"sqlite:///{db}")
    for t in s.get_trials(states=(TrialState.COMPLETE,)):
        if t.number in kept:
            assert t.values == kept[t.number]
    res = json.loads((run.path / "reports" / "search_test.json").read_text())
    assert res["pareto"] and all(p["test"] and p["search"] for p in res["pareto"])
    for p in res["pareto"]:
        assert (run.path / p["plan_file"]).is_file()
        # the plan file records the quantizer its trial was evaluated with
        from fqopt.plan import AllocationPlan

        assert AllocationPlan.load(run.path / p["plan_file"]).quantizer == p["quantizer"]
    assert (run.path / "reports" / "report.html").is_file()
    r = _cli("show", "--run", str(run.path), "--format", "json")
    rows = json.loads(r.stdout)["pareto"]
    assert [x["trial"] for x in rows] == [p["trial"] for p in res["pareto"]]
    assert all(x["test_worst_acc"] is not None for x in rows)


def test_storage_creation_race_is_retried(monkeypatch):
    """Workers that open a fresh database together race to create Optuna's tables: the losers
    see "already exists" (SQLite) or a duplicate error (PostgreSQL) and must retry, not fail;
    any other database error fails at once."""
    from sqlalchemy import exc as sa_exc

    from fqopt.search import _storage

    calls = []

    def flaky(url, **kw):
        calls.append(url)
        if len(calls) == 1:
            raise sa_exc.OperationalError("CREATE TABLE studies", {},
                                          Exception("table studies already exists"))
        return "storage"

    monkeypatch.setattr(_storage.optuna.storages, "RDBStorage", flaky)
    monkeypatch.setattr(_storage.time, "sleep", lambda s: None)
    assert _storage._create_rdb("sqlite:///x.db", {}) == "storage" and len(calls) == 2

    def broken(url, **kw):
        calls.append(url)
        raise sa_exc.OperationalError("connect", {}, Exception("unable to open database file"))

    calls.clear()
    monkeypatch.setattr(_storage.optuna.storages, "RDBStorage", broken)
    with pytest.raises(sa_exc.OperationalError, match="unable to open"):
        _storage._create_rdb("sqlite:///x.db", {})
    assert len(calls) == 1


def test_pipeline_below_the_pins_budget_recommends_a_plan_within_it(tiny_run, tmp_path):
    """--budget below what the 8-bit stem and head need (here 2.013 bits; test_vit's 3.004):
    the recommendation still fits it, its pins gave way (recorded in the static and the refined
    plan), and a note says so."""
    from fqopt.plan import AllocationPlan
    from fqopt.search import run_pipeline

    dest = tmp_path / "run"
    copy_trained_run(tiny_run, dest)
    out = run_pipeline(dest, n_trials=12, budget=2.0, refine_top=1, report=False,
                       methods=("fisher",))
    res = out.results
    rec = res.summary.recommended
    assert rec is not None and rec.avg_bits <= 2.0 + 1e-9
    static = AllocationPlan.load(dest / rec.plan_file)
    relaxed = static.meta["pins_relaxed"]
    assert set(relaxed) == {"conv1.0", "fc"} and set(relaxed.values()) == {2}
    lb = static.layer_bits()
    assert all(lb[layer].min() >= floor for layer, floor in relaxed.items())
    (refined,) = res.refined
    plan = AllocationPlan.load(dest / refined.plan_file)
    assert plan.avg_bits <= 2.0 + 1e-9 and plan.meta["pins_relaxed"] == relaxed
    note = [n for n in out.notes if "pinned layers" in n]
    assert len(note) == 1 and "alone need" in note[0]
