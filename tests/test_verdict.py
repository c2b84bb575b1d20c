"""What users see: the recommendation and its paired intervals (fqopt.search._verdict), the
plan file names, the front's marks and zoom, importances over sampled trials, and the console's
headers and heartbeat without a terminal."""

from __future__ import annotations

import io
import time
import warnings

import numpy as np
import optuna
import pytest

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _preds(n_per_group=(200, 50), seed=0):
    from fqopt.search._verdict import Predictions

    rng = np.random.default_rng(seed)
    groups = np.concatenate([np.full(n, g) for g, n in enumerate(n_per_group)])
    y = rng.integers(0, 3, len(groups))
    return Predictions(y, groups, ["A", "B"]), y, groups, rng


# --------------------------------------------------------------------------- paired bootstrap
def test_paired_bootstrap_tie_better_worse():
    from fqopt.search._verdict import paired_bootstrap

    pred, y, groups, rng = _preds()
    base = np.where(rng.random(len(y)) < 0.7, y, (y + 1) % 3)
    pred.add("base", base)
    pred.add("same", base.copy())
    same = paired_bootstrap(pred, "same", "base")
    # identical predictions: every resample gives exactly 0 (paired), so a tie
    assert same.worst_acc.diff == 0 and same.worst_acc.ci == [0.0, 0.0]
    assert same.worst_acc.verdict == "tie"
    # fixing 40 % of the errors in both groups: better on worst_acc and avg_acc
    fixed = np.where((base != y) & (rng.random(len(y)) < 0.4), y, base)
    pred.add("fixed", fixed)
    up = paired_bootstrap(pred, "fixed", "base")
    acc = [np.mean(fixed[groups == g] == y[groups == g]) for g in (0, 1)]
    acc0 = [np.mean(base[groups == g] == y[groups == g]) for g in (0, 1)]
    assert up.worst_acc.diff == pytest.approx(min(acc) - min(acc0))
    assert up.avg_acc.diff == pytest.approx(np.mean(acc) - np.mean(acc0))
    assert up.worst_acc.verdict == "better" and up.worst_acc.ci[0] > 0
    down = paired_bootstrap(pred, "base", "fixed")
    assert down.worst_acc.verdict == "worse"
    assert down.worst_acc.ci[1] == pytest.approx(-up.worst_acc.ci[0], abs=0.02)


def test_paired_interval_is_narrower_than_unpaired():
    """Two plans that differ on a few images: pairing removes the images' shared noise."""
    from fqopt.metrics import fairness_report
    from fqopt.search import SplitFigures
    from fqopt.search._verdict import paired_bootstrap, unpaired_difference

    pred, y, groups, rng = _preds((300, 300))
    a = np.where(rng.random(len(y)) < 0.75, y, (y + 1) % 3)
    b = a.copy()
    flip = rng.choice(len(y), 12, replace=False)
    b[flip] = (y[flip] + 2) % 3
    pred.add("a", a)
    pred.add("b", b)
    paired = paired_bootstrap(pred, "a", "b").avg_acc.ci
    ra = SplitFigures(fairness_report(y, a, groups, num_classes=3, bootstrap=500).to_dict())
    rb = SplitFigures(fairness_report(y, b, groups, num_classes=3, bootstrap=500).to_dict())
    unpaired = unpaired_difference(ra, rb, "avg_acc").ci
    assert paired[1] - paired[0] < 0.5 * (unpaired[1] - unpaired[0])


def test_predictions_round_trip(tmp_path):
    from fqopt.search._verdict import Predictions

    pred, y, groups, _ = _preds()
    pred.add("k", (y + 1) % 3)
    pred.save(tmp_path / "p.npz")
    back = Predictions.load(tmp_path / "p.npz")
    assert back.group_names == ["A", "B"] and np.array_equal(back.y_true, y)
    assert np.array_equal(back.correct("k"), pred.correct("k"))
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    assert Predictions.load(tmp_path / "bad.npz") is None
    assert Predictions.load(tmp_path / "missing.npz") is None


# --------------------------------------------------------------------------- choices
def _rep(avg, worst, ci=0.05):
    return {"avg_acc": avg, "worst_acc": worst, "worst_group": "B",
            "ci": {"avg_acc": [avg - ci, avg + ci], "worst_acc": [worst - ci, worst + ci]}}


def _results(**refined):
    """Typed results of the dict below (``refined``: keys added to the refined record)."""
    from fqopt.search import SearchResults

    return SearchResults.from_dict(_results_dict(**refined))


def _results_dict(**refined):
    def rec(trial, bits, search, test, kind="sampled", seed=None, index=None, label=None):
        return {"trial": trial, "index": index, "avg_bits": bits, "kind": kind, "seed": seed,
                "label": label or f"t{trial}", "quantizer": "mse", "size_bytes": 1000 * bits,
                "plan_file": None if index is None else f"plans/pareto-{index:02d}.json",
                "search": _rep(*search), "test": _rep(*test), "pred": f"p{trial}"}

    return {"run": {"path": "runs/x"},
            "pareto": [rec(7, 2.0, (0.6, 0.30), (0.6, 0.31), index=0),
                       rec(3, 3.4, (0.86, 0.75), (0.84, 0.70), index=1),
                       rec(5, 3.9, (0.87, 0.74), (0.86, 0.72), index=2),
                       rec(9, 4.6, (0.88, 0.78), (0.87, 0.76), index=3)],
            "baselines": [rec(1, 4.01, (0.85, 0.70), (0.83, 0.69), "uniform", "uniform:4"),
                          rec(2, 4.0, (0.84, 0.71), (0.82, 0.74), "fairquant", "fq@4"),
                          rec(4, 3.0, (0.80, 0.72), (0.80, 0.73), "hawq", "mean@3"),
                          rec(6, 4.0, (0.9, 0.9), (0.9, 0.9), "ladder", "worst@4"),
                          rec(8, 6.0, (0.9, 0.8), (0.9, 0.8), "uniform", "uniform:6")],
            "refined": [{"from_index": 1, "label": "BAQ of pareto-01", "avg_bits": 3.4,
                         "plan_file": "plans/refined-01.json", "test": _rep(0.8, 0.6),
                         "pred": "r1", **refined}]}


def test_recommend_best_baseline_and_summary():
    from fqopt.search._verdict import best_baseline, recommend, summarize

    res = _results()
    # by search worst_acc within the budget (the test split does not choose)
    assert recommend(res, 4.0).trial == 3
    assert recommend(res, 5.0).trial == 9
    assert recommend(res, 1.5) is None
    # the strongest baseline by test worst_acc within the budget (+ slack for pinned uniform),
    # fqopt's own ladder excluded
    assert best_baseline(res, 4.0).trial == 2
    assert best_baseline(res, 3.0).trial == 4
    s = summarize(res, None, budget=4.0)
    assert s.recommended.trial == 3 and s.best_baseline.trial == 2
    cmp = s.comparison  # no predictions: unpaired intervals
    assert "unpaired" in cmp.method
    assert cmp.worst_acc.diff == pytest.approx(0.70 - 0.74)
    assert cmp.worst_acc.verdict == "tie"
    assert "--quantizer" not in s.export_command  # the plan file records it
    assert "plans/pareto-01.json" in s.export_command
    assert [m.trial for m in s.by_budget] == [7, 3, 3, 3, 9]  # 3, 3.5, 4, 4.5, 5.5
    (r,) = s.refined
    assert r.source_file == "plans/pareto-01.json" and r.comparison.worst_acc.diff < 0
    assert r.to_dict()["from"] == "plans/pareto-01.json"  # its key in the results file
    # never the test split: a fine-tuned model is deployed (fqopt's default refinement), a BAQ
    # one only if the search split says it is better
    assert r.use_refined is False                      # BAQ, no search figures: keep the plan
    for mode, search_worst, use in (("baq", 0.76, True), ("baq", 0.75, False),
                                    ("finetune", 0.70, True)):
        res = _results(search=_rep(0.86, search_worst), mode=mode)  # source: 0.75
        (r,) = summarize(res, None, budget=4.0).refined
        assert r.use_refined is use, (mode, search_worst)
        assert r.search_worst_acc == {"refined": search_worst, "static": 0.75}
        # the model to deploy comes with the command that exports it (its checkpoint included)
        assert ("export_command" in r.to_dict()) is use
        if use:
            assert "plans/refined-01.json" in r.export_command


def test_unpaired_comparisons_are_called_unpaired():
    """Without kept predictions the report says the intervals are unpaired (``"paired"`` is a
    substring of the method ``difference of unpaired intervals``)."""
    from fqopt.search._report import _verdict_html
    from fqopt.search._verdict import summarize

    res = _results()
    res.summary = summarize(res, None, budget=4.0)
    assert not res.summary.comparison.paired
    html = _verdict_html(res)
    assert "unpaired intervals" in html and "paired bootstrap" not in html


def test_summary_pairs_when_predictions_are_kept():
    from fqopt.search._verdict import summarize

    res = _results()
    pred, y, groups, rng = _preds()
    for key in ("p3", "p2", "r1"):
        pred.add(key, np.where(rng.random(len(y)) < 0.8, y, (y + 1) % 3))
    s = summarize(res, pred, budget=4.0)
    assert "paired" in s.comparison.method and "unpaired" not in s.comparison.method
    assert s.comparison.paired
    assert "paired" in s.refined[0].comparison.method


def test_group_rates_from_confusion_cells():
    from fqopt.metrics import fairness_report
    from fqopt.search._verdict import group_rates

    y = np.array([0, 0, 1, 1, 1, 0, 1, 1])
    p = np.array([0, 1, 1, 1, 0, 0, 0, 1])
    g = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    rep = fairness_report(y, p, g, group_names=["A", "B"], class_names=["benign", "malignant"])
    rates = group_rates(rep.to_dict())
    # group A: malignant 2 of 3 found, benign 1 of 2 kept
    assert rates["A"]["malignant"] == pytest.approx((2 / 3, 1 / 2))
    assert rates["A"]["benign"] == pytest.approx((1 / 2, 2 / 3))
    assert rates["B"]["malignant"] == pytest.approx((1 / 2, 1.0))


def test_describe_words_a_tie():
    from fqopt.search._verdict import describe

    from fqopt.search import Comparison

    cmp = Comparison.from_dict({"worst_acc": {"diff": -0.005, "ci": [-0.04, 0.031],
                                              "verdict": "tie"}})
    assert describe(cmp) == "-0.005 [-0.040, +0.031], a tie (the interval contains 0)"
    assert describe(None) == "no comparison"


# --------------------------------------------------------------------------- names, plots
def test_plan_file_names_say_what_the_plan_is():
    from fqopt.search import PlanRecord
    from fqopt.search._holdout import plan_file_name

    def name(kind, params=None, seed=None, q="maxabs", bits=3.4215):
        return plan_file_name(PlanRecord(kind=kind, params=params or {}, seed=seed,
                                         quantizer=q, avg_bits=bits), 3)

    assert name("sampled", {"method": "fisher", "lambda": 0.8}, q="mse") == \
        "pareto-03-3.42b-fisher-l0.80-mse.json"
    assert name("uniform", seed="uniform:4") == "pareto-03-3.42b-uniform4-maxabs.json"
    assert name("fairquant", seed="fairquant:grape+balanced@4") == \
        "pareto-03-3.42b-fairquant-grape-balanced-maxabs.json"
    assert name("hawq", seed="mean@3") == "pareto-03-3.42b-hawq-mean-maxabs.json"
    assert name("ladder", {"method": "fisher"}, seed="worst@3") == \
        "pareto-03-3.42b-worst-fisher-maxabs.json"


def test_front_marks_recommended_and_lists_collapsed_plans():
    from fqopt.search import SearchResults
    from fqopt.search._plots import plot_pareto_front
    from fqopt.search._visualization import pareto_front_info

    res = _results_dict()
    res["baselines"].append({"trial": None, "kind": "uniform", "avg_bits": 2.01,
                             "label": "uniform 2-bit", "test": _rep(0.4, 0.05, 0.02),
                             "search": _rep(0.4, 0.05, 0.02)})
    info = pareto_front_info(SearchResults.from_dict(res), split="test", budgets=(3.0, 4.0, 5.0))
    # ≤ 3 bits has no Pareto plan but pareto-00 (2.0 b); ≤4 and ≤5 have their own
    assert [(r.budget, r.point.trial) for r in info.recommended] == [(3.0, 7), (4.0, 3),
                                                                       (5.0, 9)]
    lo, hi = info.ylim["worst_acc"]
    # the collapsed plans (worst_acc 0.31 and 0.05) sit below the axis and are listed
    assert lo > 0.31 and hi <= 1.0
    assert {p.label for p in info.collapsed["worst_acc"]} == {"t7", "uniform 2-bit"}
    visible = [p for p in info.pareto if p.worst_acc >= lo]
    assert all(p.ci["worst_acc"][0] >= lo for p in visible)  # error bars fit
    plot_pareto_front(info)


def test_importances_leave_seed_trials_out():
    """Seeds placed far from the sampled trials' relation would dominate fANOVA if counted."""
    from fqopt.search._visualization import importance_info

    study = optuna.create_study(directions=["maximize", "maximize", "minimize"])
    dists = {"budget": optuna.distributions.FloatDistribution(2, 8),
             "lambda": optuna.distributions.FloatDistribution(0, 1)}
    rng = np.random.default_rng(0)
    for i in range(30):
        seed = i < 10
        b, lam = float(rng.uniform(2, 8)), float(rng.uniform(0, 1))
        # sampled trials: worst_acc follows λ only; seeds: it follows the budget only
        worst = b / 8 if seed else lam
        study.add_trial(optuna.trial.create_trial(
            values=[0.3 + 0.1 * lam + 0.01 * b, worst, b], params={"budget": b, "lambda": lam},
            distributions=dists, user_attrs={"fqopt:seed": f"s{i}"} if seed else {}))
    info = importance_info(study)
    assert info.importances["worst_acc"]["lambda"] > 0.9


# --------------------------------------------------------------------------- console
def _console():
    from rich.console import Console

    buf = io.StringIO()
    return Console(file=buf, force_terminal=False, width=80, highlight=False), buf


def test_progress_without_a_terminal_has_headers_elapsed_and_eta():
    from fqopt.cli._ui import RichProgress

    con, buf = _console()
    with RichProgress(console=con, log_every=0.3) as cb:
        cb("header", 3, 6, title="search", detail="10 trials")
        for k in range(6):
            cb("search", k, 5, running=0)
            time.sleep(0.12)
        cb("search", 5, 5)
        cb("search", 5, 5)  # a repeated final report prints nothing more
        cb("header", 3, 6, title="search", finished=0.7)
    out = buf.getvalue()
    lines = out.splitlines()
    assert lines[0].startswith("── stage 3/6: search ── 10 trials ──") and "elapsed" in lines[0]
    progress = [ln for ln in lines if ln.strip().startswith("search:")]
    assert any("ETA" in ln and "elapsed" in ln for ln in progress)
    assert sum("done in" in ln for ln in progress) == 1
    assert lines[-1].strip().startswith("search finished in 0:01")
    assert "\x1b[" not in out  # no terminal codes in a log


def test_heartbeat_fills_silent_steps():
    from fqopt.cli._ui import RichProgress

    con, buf = _console()
    with RichProgress(console=con, log_every=0.25) as cb:
        cb("header", 4, 6, title="test")
        cb("test split", 1, 10)
        time.sleep(1.2)  # one long step: nothing calls back
        cb("test split", 10, 10)
        cb("header", 4, 6, title="test", finished=1.2)
        time.sleep(0.8)  # between stages, still not silent
    lines = buf.getvalue().splitlines()
    working = [ln for ln in lines if "(working)" in ln]
    assert len(working) >= 3 and all("1/10" in ln and "elapsed" in ln for ln in working)
    assert "working" in lines[-1] and "elapsed in all" in lines[-1]
