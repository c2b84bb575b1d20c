"""Tests for fqopt.metrics: fairness figures from confusion counts, checked against fairlearn,
sklearn, a hand-worked example and straightforward loop implementations."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from fairlearn.metrics import (MetricFrame, demographic_parity_difference,
                               equalized_odds_difference, false_positive_rate,
                               true_negative_rate, true_positive_rate)
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from fqopt.errors import UserError
from fqopt.metrics import (POLICY, SCALAR_FIGURES, ConfusionCounts, FairnessReport,
                           fairness_report)

TOL = 1e-12


def _random_predictions(seed: int, n: int, num_classes: int, num_groups: int):
    """Labels, predictions with group-dependent error rates, groups and softmax scores."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, num_groups, n)
    y = rng.integers(0, num_classes, n)
    skill = rng.uniform(0.5, 0.9, num_groups)[groups]          # per-group accuracy level
    y_pred = np.where(rng.random(n) < skill, y, rng.integers(0, num_classes, n))
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), y_pred] += 1.5
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True)
    return y, y_pred, groups, prob


# ------------------------------------------------------------------------------ fairlearn
@pytest.mark.parametrize("seed,num_groups", [(0, 3), (1, 3), (2, 4), (3, 5), (4, 6)])
def test_binary_figures_equal_fairlearn(seed, num_groups):
    y, yp, g, _ = _random_predictions(seed, 1500, 2, num_groups)
    rep = fairness_report(y, yp, g)
    frame = MetricFrame(metrics=accuracy_score, y_true=y, y_pred=yp, sensitive_features=g)
    for k, acc in frame.by_group.items():
        assert rep.group_accuracy[str(k)] == pytest.approx(acc, abs=TOL)
    assert rep.avg_acc == pytest.approx(frame.by_group.mean(), abs=TOL)
    assert rep.worst_acc == pytest.approx(frame.group_min(), abs=TOL)
    assert rep.acc_gap_maxmin == pytest.approx(frame.difference(), abs=TOL)
    assert rep.acc_gap == pytest.approx(frame.by_group.mean() - frame.group_min(), abs=TOL)
    assert rep.worst_group == str(frame.by_group.idxmin())
    assert rep.accuracy == pytest.approx(accuracy_score(y, yp), abs=TOL)
    assert rep.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, yp), abs=TOL)

    # named variants that carry fairlearn's conventions
    assert rep.dp == pytest.approx(demographic_parity_difference(y, yp, sensitive_features=g),
                                   abs=TOL)
    assert rep.eodd_max == pytest.approx(equalized_odds_difference(y, yp, sensitive_features=g),
                                         abs=TOL)

    # FairQuant's definitions, from fairlearn's per-group rates of the positive class
    def diff(metric):
        return MetricFrame(metrics=metric, y_true=y, y_pred=yp, sensitive_features=g).difference()

    d_tpr, d_fpr, d_tnr = diff(true_positive_rate), diff(false_positive_rate), \
        diff(true_negative_rate)
    assert rep.per_class["tpr_gap"][1] == pytest.approx(d_tpr, abs=TOL)
    assert rep.per_class["fpr_gap"][1] == pytest.approx(d_fpr, abs=TOL)
    # two classes: class 0's TPR is class 1's TNR, so the class mean mixes both
    assert rep.eopp1 == pytest.approx((d_tpr + d_tnr) / 2, abs=TOL)
    assert rep.eopp0 == pytest.approx(rep.eopp1, abs=TOL)
    assert rep.eodd == pytest.approx(d_tpr + d_fpr, abs=TOL)           # no ½
    assert rep.eodd_half == pytest.approx((d_tpr + d_fpr) / 2, abs=TOL)


def test_string_groups_equal_fairlearn():
    y, yp, g, _ = _random_predictions(7, 900, 2, 3)
    names = np.array(["type V-VI", "type I-II", "type III-IV"])[g]
    rep = fairness_report(y, yp, names)
    assert rep.group_names == sorted(set(names.tolist()))
    frame = MetricFrame(metrics=accuracy_score, y_true=y, y_pred=yp, sensitive_features=names)
    for k, acc in frame.by_group.items():
        assert rep.group_accuracy[k] == pytest.approx(acc, abs=TOL)
    assert rep.dp == pytest.approx(
        demographic_parity_difference(y, yp, sensitive_features=names), abs=TOL)
    # the same groups by integer code, in another order, give the same figures per name
    codes = fairness_report(y, yp, g, group_names=["type V-VI", "type I-II", "type III-IV"])
    assert codes.group_names == ["type V-VI", "type I-II", "type III-IV"]
    assert codes.group_accuracy == rep.group_accuracy and codes.n == rep.n
    assert codes.worst_group == rep.worst_group and codes.dp == pytest.approx(rep.dp, abs=TOL)


# ------------------------------------------------------------------------------ hand example
# Three classes × three groups; rows are the true class, columns the predicted class.
CONF_A = [[3, 1, 0],   # P0 = 4
          [1, 2, 1],   # P1 = 4
          [0, 0, 2]]   # P2 = 2                        n = 10, correct 7
CONF_B = [[2, 0, 1],   # P0 = 3
          [1, 1, 0],   # P1 = 2
          [0, 0, 0]]   # P2 = 0: TPR of class 2 undefined    n = 5, correct 3
CONF_C = [[1, 1, 0],   # P0 = 2
          [0, 2, 0],   # P1 = 2
          [0, 0, 0]]   # P2 = 0: TPR of class 2 undefined    n = 4, correct 3
# Per group g and class c (one-vs-rest): TPR = TP/P, TNR = TN/N, N = n − P, FP = column − TP.
#            class 0              class 1              class 2
# A  TPR  3/4            TPR  2/4            TPR  2/2
#    TNR  (6−1)/6 = 5/6  TNR  (6−1)/6 = 5/6  TNR  (8−1)/8 = 7/8
# B  TPR  2/3            TPR  1/2            TPR  —
#    TNR  (2−1)/2 = 1/2  TNR  (3−0)/3 = 1    TNR  (5−1)/5 = 4/5
# C  TPR  1/2            TPR  2/2            TPR  —
#    TNR  (2−0)/2 = 1    TNR  (2−1)/2 = 1/2  TNR  (4−0)/4 = 1
# ΔTPR: c0 3/4 − 1/2 = 1/4; c1 1 − 1/2 = 1/2; c2 only A defined → 0.   eopp1 = 0.75/3 = 0.25
# ΔTNR: c0 1 − 1/2 = 1/2; c1 1 − 1/2 = 1/2; c2 1 − 4/5 = 1/5.          eopp0 = 1.2/3 = 0.4
# eodd = mean(1/4 + 1/2, 1/2 + 1/2, 0 + 1/5) = 1.95/3 = 0.65; eodd_half = 0.325
# eodd_max = mean(max(1/4, 1/2), max(1/2, 1/2), max(0, 1/5)) = 1.2/3 = 0.4
# P(ŷ=c|g): A (4, 3, 3)/10, B (3, 1, 1)/5, C (1, 3, 0)/4
# Δrate: c0 0.6 − 0.25 = 0.35; c1 0.75 − 0.2 = 0.55; c2 0.3 − 0 = 0.3 → dp = 1.2/3 = 0.4
# group accuracy A 0.7, B 0.6, C 0.75 → avg 2.05/3, worst 0.6 (B), maxmin 0.15
# accuracy 13/19; pooled recall c0 6/9, c1 5/8, c2 2/2 → balanced (2/3 + 5/8 + 1)/3 = 55/72
HAND_EXPECTED = {
    "eopp1": 0.25, "eopp0": 0.4, "eodd": 0.65, "eodd_half": 0.325, "eodd_max": 0.4,
    "dp": 0.4, "dp_sum": 1.2, "accuracy": 13 / 19, "balanced_accuracy": 55 / 72,
    "avg_acc": 2.05 / 3, "worst_acc": 0.6, "acc_gap": 2.05 / 3 - 0.6, "acc_gap_maxmin": 0.15,
}


def _samples_from_confusions(confusions):
    y, yp, g = [], [], []
    for k, conf in enumerate(confusions):
        for t, row in enumerate(conf):
            for p, count in enumerate(row):
                y += [t] * count
                yp += [p] * count
                g += [k] * count
    order = np.random.default_rng(0).permutation(len(y))   # order must not matter
    return np.array(y)[order], np.array(yp)[order], np.array(g)[order]


def test_multiclass_hand_example():
    y, yp, g = _samples_from_confusions([CONF_A, CONF_B, CONF_C])
    rep = fairness_report(y, yp, g, group_names=["A", "B", "C"], class_names=["x", "y", "z"])
    for key, value in HAND_EXPECTED.items():
        assert getattr(rep, key) == pytest.approx(value, abs=TOL), key
    assert rep.group_accuracy == pytest.approx({"A": 0.7, "B": 0.6, "C": 0.75}, abs=TOL)
    assert rep.worst_group == "B"
    assert rep.n == {"A": 10, "B": 5, "C": 4}
    assert rep.per_class["tpr_gap"] == pytest.approx([0.25, 0.5, 0.0], abs=TOL)
    assert rep.per_class["tnr_gap"] == pytest.approx([0.5, 0.5, 0.2], abs=TOL)
    assert rep.per_class["dp_gap"] == pytest.approx([0.35, 0.55, 0.3], abs=TOL)
    # group balanced accuracy: mean recall over the classes present in the group
    assert rep.group_balanced_accuracy == pytest.approx(
        {"A": (3 / 4 + 2 / 4 + 1) / 3, "B": (2 / 3 + 1 / 2) / 2, "C": (1 / 2 + 1) / 2}, abs=TOL)
    np.testing.assert_array_equal(rep.confusion, [CONF_A, CONF_B, CONF_C])
    assert rep.policy == POLICY
    # the same counts given directly give the same report
    direct = ConfusionCounts.from_counts([CONF_A, CONF_B, CONF_C], group_names=["A", "B", "C"],
                                         class_names=["x", "y", "z"]).report()
    assert direct.to_dict() == rep.to_dict()


def test_empty_group_is_listed_in_n_only():
    y, yp, g = _samples_from_confusions([CONF_A, CONF_B, CONF_C])
    full = fairness_report(y, yp, g, group_names=["A", "B", "C"])
    # an extra group with no samples, placed first so that indices shift
    rep = fairness_report(y, yp, g + 1, group_names=["none", "A", "B", "C"])
    assert rep.n == {"none": 0, "A": 10, "B": 5, "C": 4}
    assert "none" not in rep.group_accuracy and "none" not in rep.group_balanced_accuracy
    assert rep.meta["empty_groups"] == ["none"]
    for key in SCALAR_FIGURES:
        assert getattr(rep, key) == pytest.approx(getattr(full, key), abs=TOL), key
    rows = {r[0]: r for r in rep.to_rows()[1].rows}
    assert rows["none"] == ("none", 0, None, None, None)


def test_class_without_two_supported_groups_contributes_zero():
    # class 2 exists only in group 0, class 3 nowhere: their TPR gaps are 0 and still count
    # in the mean over the four classes
    y = np.array([0, 1, 2, 0, 1, 0, 1])
    yp = np.array([0, 0, 2, 0, 1, 1, 1])
    g = np.array([0, 0, 0, 1, 1, 2, 2])
    rep = fairness_report(y, yp, g, num_classes=4)
    # TPR class 0: g0 1, g1 1, g2 0 → 1; class 1: g0 0, g1 1, g2 1 → 1
    assert rep.per_class["tpr_gap"] == pytest.approx([1.0, 1.0, 0.0, 0.0], abs=TOL)
    assert rep.eopp1 == pytest.approx(0.5, abs=TOL)
    # balanced accuracy averages recall over the classes present in y_true, as sklearn (here
    # class 3 is predicted once but never true)
    yp3 = np.where(np.arange(len(yp)) == 1, 3, yp)
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        expected = balanced_accuracy_score(y, yp3)
    assert fairness_report(y, yp3, g, num_classes=4).balanced_accuracy == pytest.approx(
        expected, abs=TOL)
    # a single group: every gap is 0 by the policy
    one = fairness_report(y, yp, np.zeros_like(g))
    assert (one.eopp0, one.eopp1, one.eodd, one.dp, one.acc_gap) == (0.0, 0.0, 0.0, 0.0, 0.0)


# ------------------------------------------------------------------------------ streaming
def test_streaming_equals_one_shot():
    y, yp, g, prob = _random_predictions(11, 3000, 5, 4)
    names = ["g0", "g1", "g2", "g3"]
    one = fairness_report(y, yp, g, prob, group_names=names)
    acc = ConfusionCounts(5, group_names=names)
    cuts = [0, 1, 1, 700, 1234, 2999, 3000]               # includes an empty batch
    for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        if k % 2:                                           # torch batches as well
            acc.update(torch.from_numpy(y[a:b]), torch.from_numpy(yp[a:b]),
                       torch.from_numpy(g[a:b]), torch.from_numpy(prob[a:b]))
        else:
            acc.update(y[a:b], yp[a:b], g[a:b], prob[a:b])
    streamed = acc.report()
    np.testing.assert_array_equal(streamed.confusion, one.confusion)
    d1, d2 = one.to_dict(), streamed.to_dict()
    for key in (*SCALAR_FIGURES, "group_accuracy", "n", "per_class", "auc", "group_auc"):
        assert d2[key] == d1[key], key
    assert streamed.ece == pytest.approx(one.ece, abs=TOL)
    assert streamed.group_ece == pytest.approx(one.group_ece, abs=TOL)

    # two accumulators merged equal one
    left, right = ConfusionCounts(5, group_names=names), ConfusionCounts(5, group_names=names)
    left.update(y[:1000], yp[:1000], g[:1000], prob[:1000])
    right.update(y[1000:], yp[1000:], g[1000:], prob[1000:])
    merged = left.merge(right).report()
    assert merged.to_dict()["group_auc"] == d1["group_auc"]
    np.testing.assert_array_equal(merged.confusion, one.confusion)

    # without stored scores, ECE still streams (histogram) but AUC is not available
    lean = ConfusionCounts(5, group_names=names, keep_scores=False)
    lean.update(y, yp, g, prob)
    lean_rep = lean.report()
    assert lean_rep.group_auc is None and lean_rep.auc is None
    assert lean_rep.group_ece == pytest.approx(one.group_ece, abs=TOL)


def test_torch_inputs_equal_numpy():
    y, yp, g, prob = _random_predictions(5, 400, 3, 3)
    ref = fairness_report(y, yp, g, prob)
    rep = fairness_report(torch.from_numpy(y), torch.from_numpy(yp), torch.from_numpy(g),
                          torch.from_numpy(prob).to(torch.float64))
    assert rep.to_dict() == ref.to_dict()
    # low-precision scores (bfloat16 has no numpy dtype) are accepted
    bf = fairness_report(torch.from_numpy(y), torch.from_numpy(yp), torch.from_numpy(g),
                         torch.from_numpy(prob).to(torch.bfloat16))
    assert bf.group_auc is not None and abs(bf.auc - ref.auc) < 0.02


# ------------------------------------------------------------------------------ AUC and ECE
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_auc_equals_sklearn_multiclass(seed):
    y, yp, g, prob = _random_predictions(seed, 2000, 4, 3)
    rep = fairness_report(y, yp, g, prob)
    assert rep.auc == pytest.approx(roc_auc_score(y, prob, multi_class="ovr"), abs=TOL)
    for k in range(3):
        m = g == k
        expected = roc_auc_score(y[m], prob[m], multi_class="ovr", labels=[0, 1, 2, 3])
        assert rep.group_auc[str(k)] == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("seed", [3, 4])
def test_group_auc_equals_sklearn_binary_with_ties(seed):
    y, yp, g, prob = _random_predictions(seed, 1500, 2, 4)
    p1 = np.round(prob[:, 1], 2)                            # many tied scores
    rep = fairness_report(y, yp, g, np.stack([1 - p1, p1], axis=1))
    vector = fairness_report(y, yp, g, p1)                  # [n] = P(class 1) for binary
    for k in range(4):
        m = g == k
        assert rep.group_auc[str(k)] == pytest.approx(roc_auc_score(y[m], p1[m]), abs=TOL)
    assert vector.group_auc == rep.group_auc


def test_auc_skips_classes_without_positives_and_negatives():
    y, yp, g, prob = _random_predictions(8, 1200, 3, 3)
    keep = ~((g == 1) & (y == 2))                           # group 1 has no class 2
    keep &= ~((g == 2) & (y != 0))                          # group 2 only has class 0
    y, yp, g, prob = y[keep], yp[keep], g[keep], prob[keep]
    rep = fairness_report(y, yp, g, prob)
    m = g == 1
    expected = np.mean([roc_auc_score(y[m] == c, prob[m, c]) for c in (0, 1)])
    assert rep.group_auc["1"] == pytest.approx(expected, abs=TOL)
    assert rep.group_auc["2"] is None
    no_prob = fairness_report(y, yp, g)
    assert no_prob.group_auc is None and no_prob.group_ece is None and no_prob.auc is None


def _ece_loop(y, prob, bins=10):
    """Textbook ECE: bins (lo, hi] on the max probability (first bin closed at 0)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    total, n = 0.0, len(y)
    for b in range(bins):
        lo, hi = edges[b], edges[b + 1]
        members = []
        for i in range(n):
            c = max(prob[i])
            if (lo < c <= hi) or (b == 0 and c == lo):
                members.append(i)
        if not members:
            continue
        conf = sum(max(prob[i]) for i in members) / len(members)
        acc = sum(int(np.argmax(prob[i]) == y[i]) for i in members) / len(members)
        total += len(members) / n * abs(acc - conf)
    return total


def test_group_ece_equals_loop():
    y, yp, g, prob = _random_predictions(9, 600, 2, 3)
    # confidences exactly on bin edges land in the lower bin
    edge = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 1.0] * 10)
    prob[:60] = np.stack([edge, 1 - edge], axis=1)
    rep = fairness_report(y, yp, g, prob)
    for k in range(3):
        m = g == k
        assert rep.group_ece[str(k)] == pytest.approx(_ece_loop(y[m], prob[m]), abs=TOL)
    assert rep.ece == pytest.approx(_ece_loop(y, prob), abs=TOL)
    y3, yp3, g3, prob3 = _random_predictions(10, 500, 5, 2)
    rep3 = fairness_report(y3, yp3, g3, prob3)
    assert rep3.group_ece["1"] == pytest.approx(_ece_loop(y3[g3 == 1], prob3[g3 == 1]), abs=TOL)


# ------------------------------------------------------------------------------ bootstrap
def test_bootstrap_brackets_and_is_deterministic():
    y, yp, g, _ = _random_predictions(12, 3000, 3, 3)
    # a real accuracy and TPR gap: group 2 gets a quarter of its predictions wrong on top
    rng = np.random.default_rng(0)
    hurt = (g == 2) & (rng.random(len(y)) < 0.25)
    yp = np.where(hurt, (y + 1) % 3, yp)
    a = fairness_report(y, yp, g, bootstrap=300, seed=1)
    b = fairness_report(y, yp, g, bootstrap=300, seed=1)
    c = fairness_report(y, yp, g, bootstrap=300, seed=2)
    assert a.ci == b.ci
    assert a.ci != c.ci
    assert a.ci["resamples"] == 300 and a.ci["confidence"] == 0.95
    for key in ("accuracy", "avg_acc", "worst_acc", "acc_gap", "acc_gap_maxmin", "eopp0",
                "eopp1", "eodd", "dp"):
        lo, hi = a.ci[key]
        assert 0.0 <= lo <= getattr(a, key) <= hi <= 1.0, key
    for name, (lo, hi) in a.ci["group_accuracy"].items():
        assert lo < a.group_accuracy[name] < hi
    # a narrower confidence gives a narrower interval
    narrow = fairness_report(y, yp, g, bootstrap=300, seed=1, confidence=0.5)
    for name in a.group_names:
        w95 = np.diff(a.ci["group_accuracy"][name])[0]
        w50 = np.diff(narrow.ci["group_accuracy"][name])[0]
        assert w50 < w95
    assert fairness_report(y, yp, g).ci is None


def test_bootstrap_matches_explicit_resampling():
    """Drawing confusion cells from a multinomial is the same as resampling samples within
    groups: compare both distributions' means and spreads."""
    y, yp, g, _ = _random_predictions(13, 600, 3, 3)
    B = 1500
    ours = fairness_report(y, yp, g, bootstrap=B, seed=0)
    rng = np.random.default_rng(123)
    members = [np.flatnonzero(g == k) for k in range(3)]
    explicit = {"worst_acc": [], "eopp1": [], "g0": []}
    for _ in range(B):
        idx = np.concatenate([rng.choice(m, size=len(m), replace=True) for m in members])
        r = fairness_report(y[idx], yp[idx], g[idx])
        explicit["worst_acc"].append(r.worst_acc)
        explicit["eopp1"].append(r.eopp1)
        explicit["g0"].append(r.group_accuracy["0"])
    for key, ci in (("worst_acc", ours.ci["worst_acc"]), ("eopp1", ours.ci["eopp1"]),
                    ("g0", ours.ci["group_accuracy"]["0"])):
        lo, hi = np.quantile(explicit[key], [0.025, 0.975])
        spread = hi - lo
        assert abs(ci[0] - lo) < 0.15 * spread and abs(ci[1] - hi) < 0.15 * spread, key


# ------------------------------------------------------------------------------ round trip
def test_round_trip_dict_and_file(tmp_path):
    y, yp, g, prob = _random_predictions(14, 800, 3, 4)
    y, yp, g, prob = y[g != 3], yp[g != 3], g[g != 3], prob[g != 3]   # one empty group
    rep = fairness_report(y, yp, g, prob, group_names=["a", "b", "c", "d"],
                          class_names=["mel", "nv", "bcc"], bootstrap=50,
                          meta={"split": "test", "plan": "plan.json"})
    d = rep.to_dict()
    json.dumps(d, allow_nan=False)                          # strict JSON: no NaN anywhere
    again = FairnessReport.from_dict(json.loads(json.dumps(d)))
    assert again.to_dict() == d
    np.testing.assert_array_equal(again.confusion, rep.confusion)
    path = tmp_path / "reports" / "test.json"
    rep.save(path)
    loaded = FairnessReport.load(path)
    assert loaded.to_dict() == d
    assert loaded.meta["split"] == "test" and loaded.meta["empty_groups"] == ["d"]
    assert not list(path.parent.glob(".*.tmp"))             # atomic write left nothing behind
    # a report without scores or intervals round-trips too
    plain = fairness_report(y, yp, g)
    assert FairnessReport.from_dict(plain.to_dict()).to_dict() == plain.to_dict()


def test_from_dict_rejects_bad_input(tmp_path):
    d = fairness_report([0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 1, 1]).to_dict()
    with pytest.raises(UserError, match="schema"):
        FairnessReport.from_dict({**d, "schema": "fqopt.report/0"})
    broken = dict(d)
    del broken["eopp1"]
    with pytest.raises(UserError, match="missing field.*eopp1"):
        FairnessReport.from_dict(broken)
    with pytest.raises(UserError, match="confusion"):
        FairnessReport.from_dict({**d, "confusion": {"shape": [1, 2, 2], "cells": []}})
    bad = tmp_path / "r.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="fairness report .*r.json"):
        FairnessReport.load(bad)


def test_to_rows_tables():
    y, yp, g, prob = _random_predictions(15, 500, 3, 3)
    rep = fairness_report(y, yp, g, prob, group_names=["I", "II", "III"])
    summary, groups = rep.to_rows()
    assert summary.columns == ["metric", "value"]
    values = dict(summary.rows)
    assert values["worst_acc"] == rep.worst_acc and values["worst_group"] == rep.worst_group
    assert values["eodd"] == rep.eodd and values["auc"] == rep.auc
    assert groups.columns == ["group", "n", "accuracy", "auc", "ece"]
    assert groups.rows[1] == ("II", rep.n["II"], rep.group_accuracy["II"], rep.group_auc["II"],
                              rep.group_ece["II"])
    with_ci = fairness_report(y, yp, g, bootstrap=20).to_rows()
    assert with_ci[0].columns[-2:] == ["ci_low", "ci_high"]
    assert with_ci[1].columns[-2:] == ["acc_low", "acc_high"]
    assert all(len(r) == 7 for r in with_ci[1].rows)


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("args,kwargs,message", [
    (([0, 1, 1], [0, 1], [0, 0, 0]), {}, r"y_true has 3 samples but y_pred has 2"),
    (([0, 1, 1], [0, 1, 1], [0, 0]), {}, r"y_true has 3 samples but groups has 2"),
    (([0, 1, 3], [0, 1, 1], [0, 0, 0]), {"num_classes": 3},
     r"y_true\[2\] = 3 is outside the range 0..2 of the 3 classes"),
    (([0, 1, 1], [0, -1, 1], [0, 0, 0]), {}, r"y_pred\[1\] = -1 is outside"),
    (([0, 1, 1], [0, 1, 1], [0, 2, 0]), {"group_names": ["a", "b"]},
     r"groups\[1\] = 2 is outside the range 0..1 of the 2 groups"),
    (([0, 1, 1], [0, 1, 1], ["a", "c", "a"]), {"group_names": ["a", "b"]}, r"\['c'\] not among"),
    (([0, 1, 1], [[0.9, 0.1]] * 3, [0, 0, 0]), {}, r"y_pred must be a 1-D .*argmax"),
    (([0, 1.5, 1], [0, 1, 1], [0, 0, 0]), {}, r"y_true\[1\] = 1.5 is not an integer"),
    (([0, 1, 1], [0, 1, 1], [0, 0, 0], [[0.5, 0.5]] * 2), {}, r"y_prob must have shape"),
    (([0, 1, 1], [0, 1, 1], [0, 0, 0], [[2.0, -1.0]] * 3), {}, r"not a probability.*logits"),
    (([], [], []), {}, r"no samples"),
    (([0, 1], [0, 1], [0, 1]), {"bootstrap": -1}, r"bootstrap must be"),
    (([0, 1], [0, 1], [0, 1]), {"confidence": 1.5}, r"confidence must be"),
    (([0, 1], [0, 1], [0, 1]), {"class_names": ["a", "b", "c"], "num_classes": 2},
     r"3 class_names given for num_classes=2"),
])
def test_bad_input_raises_user_error(args, kwargs, message):
    with pytest.raises(UserError, match=message):
        fairness_report(*args, **kwargs)


def test_streaming_rejects_mixed_scores_and_keeps_state():
    acc = ConfusionCounts(2, group_names=["a", "b"])
    acc.update([0, 1], [0, 1], [0, 1], [[0.9, 0.1], [0.2, 0.8]])
    with pytest.raises(UserError, match="y_prob was given for some batches"):
        acc.update([0, 1], [0, 1], [0, 1])
    with pytest.raises(UserError, match="outside"):
        acc.update([0, 5], [0, 1], [0, 1], [[0.9, 0.1], [0.2, 0.8]])
    assert acc.n.tolist() == [1, 1]                         # failed updates added nothing
    with pytest.raises(UserError, match="num_groups or group_names"):
        ConfusionCounts(3)


# ------------------------------------------------------------------------------ performance
def test_report_of_100k_samples_is_fast():
    y, yp, g, _ = _random_predictions(16, 100_000, 9, 6)
    fairness_report(y, yp, g)                               # warm-up
    start = time.process_time()
    for _ in range(5):
        rep = fairness_report(y, yp, g)
    per_call = (time.process_time() - start) / 5
    assert rep.n["0"] > 0
    assert per_call < 0.1, f"{per_call * 1e3:.1f} ms per report of 100k samples"
