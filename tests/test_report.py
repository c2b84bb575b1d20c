"""fqopt report / show: the figures' info objects, the PNGs, the self-contained HTML, the
test-split results and the acceptance check."""

from __future__ import annotations

import base64
import copy
import json
import math
import re
import warnings

import numpy as np
import optuna
import pytest

from fqopt.errors import UserError
from fqopt.search import SearchResults
from tests.fixtures import copy_trained_run

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _rep(avg, worst, groups=None):
    groups = groups or {"A": worst, "B": avg + (avg - worst)}
    return {"avg_acc": avg, "worst_acc": worst, "group_accuracy": groups,
            "group_names": list(groups), "n": {g: 10 for g in groups}}


def _rec(trial, bits, search, test=None, kind="sampled", seed=None, label=None, index=None):
    return {"trial": trial, "index": index, "avg_bits": bits, "kind": kind, "seed": seed,
            "label": label or f"t{trial}", "search": _rep(*search),
            "test": None if test is None else _rep(*test)}


@pytest.fixture
def results():
    """A hand-made results dict: three Pareto plans, two baselines, FP32."""
    return {
        "fp32": {"search": _rep(0.9, 0.8), "test": _rep(0.88, 0.7)},
        "run": {"groups": ["A", "B"]},
        "pareto": [_rec(7, 2.6, (0.80, 0.60), (0.79, 0.55), index=0),
                   _rec(3, 3.9, (0.86, 0.75), (0.84, 0.62), index=1),
                   _rec(9, 4.4, (0.88, 0.72), (0.87, 0.69), index=2)],
        "baselines": [_rec(1, 4.0, (0.85, 0.70), (0.83, 0.60), "uniform", "uniform:4",
                           "uniform 4-bit"),
                      _rec(2, 4.0, (0.84, 0.71), (0.82, 0.66), "fairquant",
                           "fairquant:grape+balanced@4", "FairQuant grape @ 4"),
                      _rec(4, 5.2, (0.86, 0.73), (0.85, 0.65), "mystery", "x:1", "x")],
    }


# --------------------------------------------------------------------------- info objects
def test_pareto_front_info(results):
    from fqopt.search._visualization import pareto_front_info

    results = SearchResults.from_dict(results)
    info = pareto_front_info(results, split="test")
    assert [p.trial for p in info.pareto] == [7, 3, 9]
    assert [p.worst_acc for p in info.pareto] == [0.55, 0.62, 0.69]
    assert set(info.baselines) == {"uniform", "fairquant"}  # unknown kinds are left out
    assert info.baselines["uniform"][0].avg_acc == 0.83
    assert info.fp32 == {"avg_acc": 0.88, "worst_acc": 0.7}
    assert info.trials == []  # background trials only on the search split with a study
    s = pareto_front_info(results, split="search")
    assert [p.worst_acc for p in s.pareto] == [0.60, 0.75, 0.72]


def test_staircase_is_the_running_best():
    from fqopt.search._plots import staircase

    xs = [4.4, 2.6, 3.9, 3.0]
    ys = [0.72, 0.60, 0.75, 0.58]
    sx, sy = staircase(xs, ys)
    assert sx == [2.6, 3.9, 4.4] and sy == [0.60, 0.75, 0.75]
    # brute force: at each x, the step value is the best y at ≤ x
    for x in np.linspace(2.6, 4.4, 19):
        best = max(y for xx, y in zip(xs, ys) if xx <= x + 1e-12)
        step = [v for px, v in zip(sx, sy) if px <= x + 1e-12][-1]
        assert step == best


def test_chosen_plans_use_the_search_split_only(results):
    from fqopt.search._visualization import chosen_plans

    # at ≤ 4.5 bits the search split prefers trial 3 (0.75) although the test split would
    # prefer trial 9 (0.69 > 0.62): the choice must not look at the test split
    results = SearchResults.from_dict(results)
    chosen = chosen_plans(results, caps=(3.0, 4.5))
    assert [(c.cap, c.record.trial) for c in chosen] == [(3.0, 7), (4.5, 3)]
    assert chosen_plans(results, caps=(2.0,)) == []


def test_group_accuracy_info(results):
    from fqopt.search._visualization import chosen_plans, group_accuracy_info

    results = SearchResults.from_dict(results)
    info = group_accuracy_info(results, split="test", chosen=chosen_plans(results))
    labels = [label for label, _ in info.series]
    assert labels[0] == "FP32" and labels[1].startswith("uniform 4-bit")
    assert labels[2].startswith("FairQuant grape @ 4")
    assert any(lab.startswith("pareto-01") for lab in labels)
    assert info.groups == ["A", "B"]
    fp = dict(info.series)["FP32"]
    assert fp == [0.7, pytest.approx(1.06)]


def test_layer_bits_info_pads_the_heat_map():
    from fqopt.plan import AllocationPlan
    from fqopt.search._visualization import layer_bits_info
    from fqopt.units import LayerInfo, UnitSet

    units = UnitSet(granularity="channel",
                    layers=[LayerInfo("a", "conv", (2, 3, 1, 1), -1),
                            LayerInfo("b", "linear", (4, 2), -1)],
                    pinned={}, ties=[], float_params=0)
    p1 = AllocationPlan.from_unit_bits(units, [2, 8, 4, 4, 3, 3], model="m")
    p2 = AllocationPlan.from_unit_bits(units, [4, 4, 6, 6, 6, 6], model="m")
    info = layer_bits_info([("one", p1), ("two", p2)], heatmap_index=0)
    assert info.layers == ["a", "b"] and info.params == [6, 8]
    assert dict(info.series)["one"] == [5.0, 3.5]
    assert info.heatmap.shape == (2, 4)
    assert info.heatmap[0, :2].tolist() == [2, 8] and np.isnan(info.heatmap[0, 2:]).all()
    assert info.heatmap[1].tolist() == [4, 4, 3, 3]
    assert info.bits == [2, 3, 4, 6, 8]


def _toy_study(values):
    study = optuna.create_study(directions=["maximize", "maximize", "minimize"])
    for i, v in enumerate(values):
        attrs = {"fqopt:seed": f"s{i}"} if i < 2 else {}
        study.add_trial(optuna.trial.create_trial(
            values=list(v), params={"budget": v[2], "lambda": (i % 5) / 4},
            distributions={"budget": optuna.distributions.FloatDistribution(2, 8),
                           "lambda": optuna.distributions.FloatDistribution(0, 1)},
            user_attrs=attrs))
    return study


def test_history_info_best_so_far_under_a_cap():
    from fqopt.search._visualization import history_info

    study = _toy_study([(0.8, 0.5, 6.0), (0.8, 0.6, 4.0), (0.8, 0.9, 5.0), (0.8, 0.7, 3.0),
                        (0.8, 0.65, 4.5)])
    info = history_info(study, target=1, cap=4.5)
    assert info.numbers == [0, 1, 2, 3, 4] and info.seeded == [True, True, False, False, False]
    assert math.isnan(info.best[0]) and info.best[1:] == [0.6, 0.6, 0.7, 0.7]
    every = history_info(study, target=1, cap=None)
    assert every.best == [0.5, 0.6, 0.9, 0.9, 0.9]


def test_importance_info_needs_enough_trials():
    from fqopt.search._plots import plot_importance
    from fqopt.search._visualization import importance_info

    few = importance_info(_toy_study([(0.8, 0.5, 6.0)] * 3))
    assert not few.params and "1 complete sampled trials" in few.message
    plot_importance(few)  # draws the message instead of bars
    rng = np.random.default_rng(0)
    vals = [(float(a), float(b), float(c)) for a, b, c in
            zip(rng.uniform(0.5, 1, 12), rng.uniform(0.3, 0.9, 12), rng.uniform(2, 8, 12))]
    info = importance_info(_toy_study(vals))
    assert set(info.params) == {"budget", "lambda"}
    for m in ("avg_acc", "worst_acc", "avg_bits"):
        assert sum(info.importances[m].values()) == pytest.approx(1.0)
    # avg_bits equals the budget parameter here: it explains (almost) all of it
    assert info.importances["avg_bits"]["budget"] > 0.9


def test_acceptance_check(results):
    from fqopt.search._holdout import acceptance_check

    chk = acceptance_check(SearchResults.from_dict(results))
    assert chk.uniform_test_worst_acc == 0.60 and chk.plans_at_or_below == 3
    assert chk.best_plan["trial"] == 9 and chk.passed
    results["pareto"][2]["avg_bits"] = 4.6  # now only plans with test worst ≤ 0.62 qualify
    chk = acceptance_check(SearchResults.from_dict(results))
    assert chk.best_plan["trial"] == 3 and chk.passed
    results["pareto"][1]["test"]["worst_acc"] = 0.60   # a tie is not better
    results["pareto"][0]["test"]["worst_acc"] = 0.50
    assert not acceptance_check(SearchResults.from_dict(results)).passed


# --------------------------------------------------------------------------- on a real run
@pytest.fixture(scope="module")
def searched(tiny_run, tmp_path_factory):
    """The whole pipeline (no training: the tiny run is trained) with a short search."""
    from fqopt.runs import Run
    from fqopt.search._pipeline import run_pipeline

    dest = tmp_path_factory.mktemp("report") / "run"
    copy_trained_run(tiny_run, dest)
    stages = []
    result = run_pipeline(dest, n_trials=20, refine_top=0, calib=128,
                          callback=lambda stage, done, total, **kw: stages.append(stage))
    assert {"search", "test split", "report"} <= set(stages)
    assert any(s.startswith("profile ") for s in stages)
    return Run.open(dest), result


def test_pipeline_outputs(searched):
    from fqopt.plan import AllocationPlan
    from fqopt.search._study import pareto_trials

    run, result = searched
    res = json.loads((run.reports_dir / "search_test.json").read_text())
    front = pareto_trials(result.study)
    assert [p["trial"] for p in res["pareto"]] == [t.number for t in front]
    model = run.model()
    from fqopt.evaluation import evaluate

    for p in res["pareto"]:
        plan = AllocationPlan.load(run.path / p["plan_file"])
        assert plan.meta["trial"] == p["trial"]
        assert p["search"]["worst_acc"] == next(t.values[1] for t in front
                                                if t.number == p["trial"])
    # test figures are the plan applied on the test split (checked independently for one)
    p = res["pareto"][len(res["pareto"]) // 2]
    plan = AllocationPlan.load(run.path / p["plan_file"])
    rep = evaluate(model, run.dataset(), "test", plan=plan, quantizer=p["quantizer"])
    assert rep.worst_acc == pytest.approx(p["test"]["worst_acc"], abs=1e-12)
    assert rep.avg_acc == pytest.approx(p["test"]["avg_acc"], abs=1e-12)
    fp = evaluate(model, run.dataset(), "test")
    assert fp.avg_acc == pytest.approx(res["fp32"]["test"]["avg_acc"], abs=1e-12)
    keys = {b["seed"] for b in res["baselines"]}
    assert {"uniform:4", "uniform-all:4", "worst@4", "fairquant:gradient+max", "mean@4"} <= keys
    assert res["check"]["uniform_bits"] == 4 and "passed" in res["check"]
    assert set(res["stages"]) >= {"train", "profile", "search", "test", "report"}


def test_results_file_round_trips(searched):
    """The typed results write exactly the file the pipeline wrote (schema unchanged), and
    read back the pipeline's own records."""
    from fqopt.search import load_results

    run, result = searched
    on_disk = json.loads((run.reports_dir / "search_test.json").read_text())
    typed = SearchResults.from_dict(on_disk)
    assert typed.to_dict() == on_disk
    assert json.dumps(typed.to_dict(), sort_keys=True) == json.dumps(on_disk, sort_keys=True)
    assert on_disk["schema"] == "fqopt.search-results/1"
    loaded = load_results(run)
    assert loaded.to_dict() == on_disk and loaded.study.name == result.results.study.name
    assert [p.trial for p in loaded.pareto] == [p.trial for p in result.results.pareto]
    assert loaded.pareto[0].test.worst_acc == on_disk["pareto"][0]["test"]["worst_acc"]
    assert loaded.summary.budget == on_disk["summary"]["budget"] == 4.0
    beside = [b for b in loaded.baselines if b.beside_study]
    assert beside and all(b.trial is None and b.pareto is False for b in beside)
    # a file of an older fqopt (no summary, no dashboard) loads and is written back as it was
    older = copy.deepcopy(on_disk)
    del older["summary"], older["study"]["dashboard"], older["study"]["artifacts"]
    old = SearchResults.from_dict(older)
    assert old.summary is None and old.study.dashboard is None
    assert old.to_dict() == older
    # a key written by a newer fqopt is kept, not dropped
    on_disk["pareto"][0]["future_field"] = {"x": 1}
    assert SearchResults.from_dict(on_disk).to_dict() == on_disk


def test_report_files_are_self_contained(searched):
    from PIL import Image

    run, result = searched
    html = (run.reports_dir / "report.html").read_text()
    names = ["pareto_test", "pareto_search", "group_accuracy", "layer_bits", "channel_bits",
             "history", "importance"]
    for name in names:
        png = run.reports_dir / f"{name}.png"
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        with Image.open(png) as im:
            assert im.size[0] >= 600 and im.size[1] >= 300, (name, im.size)
        assert base64.b64encode(data).decode() in html, name  # embedded, not linked
    assert not re.search(r"(src|href)=['\"](https?:|//|[^'\"]*\.png)", html)
    assert "search</b> split chose the plans" in html and "test</b> split" in html
    for p in result.results.pareto:
        assert f"pareto-{p.index:02d}" in html


def test_report_cli_refuses_to_overwrite(searched, capsys):
    from fqopt.cli import main

    run, _ = searched
    capsys.readouterr()
    assert main(["report", "--run", str(run.path)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    before = (run.reports_dir / "report.html").stat().st_mtime_ns
    assert main(["report", "--run", str(run.path), "--force"]) == 0
    assert (run.reports_dir / "report.html").stat().st_mtime_ns > before


def test_report_from_the_study_alone(searched, tmp_path):
    """Without test results (e.g. an interrupted search) the report shows the search split."""
    from fqopt.search._report import write_report

    run, result = searched
    path = write_report(run, result.study, None, out_dir=tmp_path, force=False)
    assert path.is_file() and (tmp_path / "pareto_search.png").is_file()
    with pytest.raises(UserError, match="already exists"):
        write_report(run, result.study, None, out_dir=tmp_path)


def test_show_lists_the_pareto_plans(searched, capsys):
    from fqopt.cli import main

    run, result = searched
    capsys.readouterr()
    assert main(["show", "--run", str(run.path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["pareto"]
    res = result.results
    assert [r["trial"] for r in rows] == [p.trial for p in res.pareto]
    for r, p in zip(rows, res.pareto):
        assert r["test_worst_acc"] == p.test.worst_acc
        assert r["search_avg_acc"] == p.search.avg_acc
        assert r["plan_file"] == p.plan_file
        if r["kind"] == "sampled":
            assert r["method"] in ("fisher", "gradient", "grape") and r["lambda"] is not None
        if r["kind"] == "uniform":
            assert r["method"] is None and r["lambda"] is None
    assert main(["show", "--run", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert "Pareto plans of fqopt-test_resnet-channel" in out
    assert out.count("\n│ ") >= len(rows)


def test_mct_is_a_baseline_or_says_why_not(searched):
    """Sony MCT at the recommendation's budget joins the baselines the verdict compares with
    when it is installed (``pip install fqopt[bench]``); otherwise the results say why not."""
    import numpy as np

    from fqopt import mct
    from fqopt.search._verdict import BASELINE_KINDS, PREDICTIONS_FILE

    run, result = searched
    res = json.loads((run.reports_dir / "search_test.json").read_text())
    found = [b for b in res["baselines"] if b["kind"] == "mct"]
    assert "mct" in BASELINE_KINDS
    if not mct.available():
        assert not found
        assert any("model-compression-toolkit is not installed" in n for n in res["notes"])
        return
    assert len(found) == 1
    rec = found[0]
    assert rec["seed"] == "mct:4" and rec["avg_bits"] <= 4 + 1e-6
    with np.load(run.reports_dir / PREDICTIONS_FILE) as z:
        pred = z[f"pred:{rec['pred']}"]
        y, g = z["y_true"], z["groups"]
    # the recorded test figures are those of the kept predictions (independent recount)
    acc = [float((pred[g == k] == y[g == k]).mean()) for k in np.unique(g)]
    assert rec["test"]["worst_acc"] == pytest.approx(min(acc), abs=1e-12)
