"""Fairness metrics: per-group, per-class confusion counts and the FairnessReport (docs/design.md §2,
§4.5).

Every figure derives from one int64 array ``counts[G, C, C]`` (group, true class, predicted
class), accumulated in one streaming pass by :class:`ConfusionCounts`. Scores (``y_prob``
``[n, C]``) are optional: ECE is accumulated as a per-group histogram, AUC keeps the score rows in
memory (``keep_scores=False`` drops them). All numbers are fractions in [0, 1].

Definitions (FairQuant's unless named otherwise). For group g and class c, one-vs-rest:
``TPR[g, c] = TP / P`` (P = samples of class c in g), ``TNR[g, c] = TN / N`` (N = samples of g not
of class c), ``FPR = 1 − TNR``, ``rate[g, c] = P(ŷ = c | g)``. ``Δ_c x = max_g x[g, c] −
min_g x[g, c]`` over the groups where ``x[g, c]`` is defined.

- ``accuracy`` overall; ``balanced_accuracy`` = mean recall over the classes present in y_true
  (sklearn's ``balanced_accuracy_score``); ``group_accuracy`` per group;
- ``avg_acc`` = mean of group accuracies; ``worst_acc`` = min; ``worst_group`` its name (the first
  one on ties); ``acc_gap`` = avg_acc − worst_acc; ``acc_gap_maxmin`` = max − min
  (fairlearn's ``MetricFrame.difference()``);
- ``eopp1`` = mean_c Δ_c TPR; ``eopp0`` = mean_c Δ_c TNR; ``eodd`` = mean_c (Δ_c TPR + Δ_c FPR),
  no ½ (so eodd = eopp0 + eopp1);
- named variants: ``eodd_half`` = eodd / 2 (FairPrune line); ``eodd_max`` = mean_c max(Δ_c TPR,
  Δ_c FPR), which for two classes equals fairlearn's ``equalized_odds_difference`` (its
  ``worst_case`` aggregation, positive class 1); ``dp`` = mean_c Δ_c rate, which for two classes
  equals fairlearn's ``demographic_parity_difference``; ``dp_sum`` = Σ_c Δ_c rate (FairPrune's
  DP for two groups);
- ``group_auc``: one-vs-rest macro AUC per group from ``y_prob`` (binary: the AUC of column 1, as
  sklearn); ``group_ece``: expected calibration error with 10 equal-width bins on the max-prob
  confidence (Guo et al. 2017: bin ``(lo, hi]``, the first bin also holds 0; a sample is correct
  when ``argmax y_prob`` equals its label).

Policy for cells without support (``POLICY``, stored in every report):

- ``TPR[g, c]`` is undefined when group g has no sample of class c, ``TNR``/``FPR`` when every
  sample of g is of class c, ``rate[g, ·]`` when g has no sample at all. Undefined cells are left
  out of the max/min for their class; a class where fewer than two groups are defined contributes
  0, and the means still run over all C classes (as FairQuant).
- A group with no samples appears in ``n`` with 0 and nowhere else: it is left out of
  ``group_accuracy``, ``group_balanced_accuracy``, ``group_auc``, ``group_ece``, of avg/worst and of
  every gap, and is listed in ``meta['empty_groups']``. Pass ``group_names`` to list every group.
- AUC skips classes that have no positive or no negative sample in the group; a group where no
  class is left gets ``None``. ``group_auc``/``group_ece`` are ``None`` without ``y_prob``.
- Bootstrap intervals resample samples with replacement within each group (group sizes fixed);
  since every count-derived figure depends on the sample only through the counts, this is done
  exactly by drawing each group's confusion cells from a multinomial. Percentile intervals.
  Gaps (max − min over groups) are biased upward under resampling noise: when the true gaps are
  near zero, their interval can lie entirely above the point estimate, which says the gap is
  within sampling noise. Intervals of accuracies bracket their estimate as usual.

Cost: the counts-only report of 100k samples takes about a millisecond; AUC adds one sort of the
scores per class; bootstrap is ``resamples × groups`` multinomial draws over the nonzero cells.

One module (~700 lines, a quarter of it this docstring) because every figure is a function of the
same ``counts`` array under the policy above: the definitions, the accumulator, the bootstrap and
the report's JSON contract are one specification, read together.
"""

from __future__ import annotations

import math
import os
from collections import namedtuple
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fqopt._io import read_json, write_json
from fqopt.errors import UserError

SCHEMA = "fqopt.report/1"
ECE_BINS = 10

POLICY = {
    "empty_cells": "TPR[g,c] is undefined when group g has no sample of class c, TNR/FPR when all "
                   "of g is class c; undefined groups are left out of the max-min of class c; a "
                   "class with fewer than two defined groups contributes 0; means run over all "
                   "classes",
    "empty_groups": "groups without samples have n = 0 and are left out of every group figure, "
                    "mean, min and gap",
    "auc": "one-vs-rest macro AUC over the classes with positives and negatives in the group "
           "(binary: AUC of class 1); None when no class qualifies or without y_prob",
    "ece": "meta.ece_bins (default 10) equal-width bins (lo, hi] on max-prob confidence, "
           "correct = argmax(y_prob) == y",
    "bootstrap": "percentile intervals; samples resampled with replacement within each group; "
                 "gap intervals are biased upward when the true gaps are near zero",
}

#: Count-derived scalar figures, in table order (all get bootstrap intervals).
SCALAR_FIGURES = ("accuracy", "balanced_accuracy", "avg_acc", "worst_acc", "acc_gap",
                  "acc_gap_maxmin", "eopp0", "eopp1", "eodd", "eodd_half", "eodd_max", "dp",
                  "dp_sum")

Table = namedtuple("Table", "title columns rows")


# --------------------------------------------------------------------------- input checks
def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu()
        if x.is_floating_point():  # bfloat16 has no numpy dtype
            x = x.double()
        x = x.numpy()
    return np.asarray(x)


def _class_indices(x, name: str) -> np.ndarray:
    """``[n]`` int64 class indices from an int, bool or integral float array (range unchecked)."""
    a = _to_numpy(x)
    if a.ndim != 1:
        hint = "; take the argmax over classes first" if a.ndim == 2 and name == "y_pred" else ""
        raise UserError(f"{name} must be a 1-D array of class indices, shape [n], got shape "
                        f"{tuple(a.shape)}{hint}")
    if a.dtype == bool or np.issubdtype(a.dtype, np.integer):
        return a.astype(np.int64, copy=False)
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            i = int(np.argmax(bad))
            raise UserError(f"{name}[{i}] = {a[i].item()!r} is not an integer index")
        return a.astype(np.int64)
    raise UserError(f"{name} must hold integer class indices, got dtype {a.dtype}")


def _check_range(a: np.ndarray, name: str, size: int, what: str) -> None:
    """UserError naming the first entry of ``a`` outside ``0..size-1`` (``what``: "classes")."""
    bad = (a < 0) | (a >= size)
    if bad.any():
        i = int(np.argmax(bad))
        raise UserError(f"{name}[{i}] = {int(a[i])} is outside the range 0..{size - 1} of the "
                        f"{size} {what}")


def _check_length(n: int, a, name: str) -> None:
    if len(a) != n:
        raise UserError(f"y_true has {n} samples but {name} has {len(a)}; expected one entry per "
                        "sample, shape [n]")


def _scores(y_prob, n: int, num_classes: int) -> np.ndarray:
    """``[n, C]`` float64 probabilities; a binary ``[n]`` vector is read as P(class 1)."""
    p = _to_numpy(y_prob)
    if not np.issubdtype(p.dtype, np.number) or p.dtype == bool:
        raise UserError(f"y_prob must hold probabilities, got dtype {p.dtype}")
    p = p.astype(np.float64, copy=False)
    if p.ndim == 1 and num_classes == 2:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2 or p.shape != (n, num_classes):
        raise UserError(f"y_prob must have shape [n, C] = [{n}, {num_classes}] (one probability "
                        f"per class), got shape {tuple(p.shape)}")
    bad = ~np.isfinite(p) | (p < -1e-6) | (p > 1 + 1e-6)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise UserError(f"y_prob[{i}, {j}] = {float(p[i, j])!r} is not a probability in [0, 1] "
                        "(pass softmax outputs, not logits)")
    return p


def _group_codes(groups, group_names: list[str] | None, n: int) -> np.ndarray:
    """``[n]`` int64 group indices from integer codes or from names in ``group_names``."""
    a = _to_numpy(groups)
    if a.ndim != 1:
        raise UserError(f"groups must be a 1-D array, shape [n], got shape {tuple(a.shape)}")
    _check_length(n, a, "groups")
    if a.dtype.kind in "OUS":  # names
        if group_names is None:
            raise UserError("groups are given by name; pass group_names to fix their order")
        uniq, inv = np.unique(a.astype(str), return_inverse=True)
        index = {g: i for i, g in enumerate(group_names)}
        unknown = [u for u in uniq.tolist() if u not in index]
        if unknown:
            raise UserError(f"groups contains {unknown[:3]} not among group_names {group_names}")
        return np.asarray([index[u] for u in uniq.tolist()], dtype=np.int64)[inv.reshape(-1)]
    codes = _class_indices(a, "groups")
    if group_names is not None:
        _check_range(codes, "groups", len(group_names), "groups")
    elif len(codes) and codes.min() < 0:
        i = int(np.argmin(codes))
        raise UserError(f"groups[{i}] = {int(codes[i])} is negative; group codes start at 0")
    return codes


def _ece_bin(conf: np.ndarray, bins: int) -> np.ndarray:
    """Bin index of each confidence: bin i is ``(i/bins, (i+1)/bins]``; 0 joins the first bin."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.searchsorted(edges[1:-1], conf, side="left")


# --------------------------------------------------------------------------- core maths
def _spread(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """max − min over the group axis (-2) of the valid entries; 0 where fewer than 2 are valid."""
    hi = np.where(valid, x, -np.inf).max(axis=-2)
    lo = np.where(valid, x, np.inf).min(axis=-2)
    return np.where(valid.sum(axis=-2) >= 2, hi - lo, 0.0)


def _figures(tp: np.ndarray, pos: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Every count-derived figure from ``tp``, ``pos`` (true-class totals) and ``pred``
    (predicted-class totals), each ``[..., G, C]``; leading axes are a batch (bootstrap)."""
    tp, pos, pred = (np.asarray(a, dtype=np.float64) for a in (tp, pos, pred))
    n = pos.sum(axis=-1)                       # [..., G]
    correct = tp.sum(axis=-1)
    present = n > 0
    neg = n[..., None] - pos
    fp = pred - tp
    tn = neg - fp
    has_pos, has_neg = pos > 0, neg > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        group_acc = np.where(present, correct / n, np.nan)
        tpr = np.where(has_pos, tp / pos, np.nan)
        tnr = np.where(has_neg, tn / neg, np.nan)
        fpr = np.where(has_neg, fp / neg, np.nan)
        rate = np.where(present[..., None], pred / n[..., None], np.nan)
        group_bal = (np.where(has_pos, tpr, 0.0).sum(axis=-1) / has_pos.sum(axis=-1))
        group_bal = np.where(present, group_bal, np.nan)
        pos_all, tp_all = pos.sum(axis=-2), tp.sum(axis=-2)
        recall_all = np.where(pos_all > 0, tp_all / pos_all, 0.0)
        balanced = recall_all.sum(axis=-1) / (pos_all > 0).sum(axis=-1)
        accuracy = correct.sum(axis=-1) / n.sum(axis=-1)
        avg_acc = np.where(present, group_acc, 0.0).sum(axis=-1) / present.sum(axis=-1)
    worst = np.where(present, group_acc, np.inf).min(axis=-1)
    best = np.where(present, group_acc, -np.inf).max(axis=-1)
    tpr_gap = _spread(tpr, has_pos)
    tnr_gap = _spread(tnr, has_neg)
    fpr_gap = _spread(fpr, has_neg)
    dp_gap = _spread(rate, np.broadcast_to(present[..., None], rate.shape))
    eodd = (tpr_gap + fpr_gap).mean(axis=-1)
    return {
        "accuracy": accuracy, "balanced_accuracy": balanced, "group_accuracy": group_acc,
        "group_balanced_accuracy": group_bal, "avg_acc": avg_acc, "worst_acc": worst,
        "acc_gap": avg_acc - worst, "acc_gap_maxmin": best - worst,
        "eopp0": tnr_gap.mean(axis=-1), "eopp1": tpr_gap.mean(axis=-1), "eodd": eodd,
        "eodd_half": eodd / 2.0, "eodd_max": np.maximum(tpr_gap, fpr_gap).mean(axis=-1),
        "dp": dp_gap.mean(axis=-1), "dp_sum": dp_gap.sum(axis=-1),
        "tpr_gap": tpr_gap, "tnr_gap": tnr_gap, "fpr_gap": fpr_gap, "dp_gap": dp_gap,
    }


def _cell_totals(counts: np.ndarray):
    """``(tp, pos, pred)``, each ``[G, C]``, from ``counts[G, C_true, C_pred]``."""
    return (np.diagonal(counts, axis1=-2, axis2=-1), counts.sum(axis=-1), counts.sum(axis=-2))


def _auc_sorted(score: np.ndarray, is_pos: np.ndarray, seg: np.ndarray, G: int):
    """Mann-Whitney AUC per segment (ties count ½): ``score`` ``[n]`` is ascending within each
    contiguous segment ``seg`` ``[n]`` (ascending ids in ``range(G)``). Returns ``(auc [G],
    defined [G])``; AUC is defined where a segment has positives and negatives."""
    n = len(score)
    idx = np.arange(n)
    new_seg = np.r_[True, seg[1:] != seg[:-1]]
    new_val = new_seg | np.r_[True, score[1:] != score[:-1]]
    seg_start = np.maximum.accumulate(np.where(new_seg, idx, 0))
    starts = np.flatnonzero(new_val)
    lens = np.diff(np.r_[starts, n])
    # a run of equal scores at 0-based positions f..f+len-1 shares the mean rank f + (len+1)/2
    rank = np.repeat(starts - seg_start[starts] + (lens + 1) / 2.0, lens)
    n_pos = np.bincount(seg, weights=is_pos, minlength=G)
    n_neg = np.bincount(seg, minlength=G) - n_pos
    rank_pos = np.bincount(seg, weights=rank * is_pos, minlength=G)
    defined = (n_pos > 0) & (n_neg > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return auc, defined


def _auc_ovr(y: np.ndarray, groups: np.ndarray, prob: np.ndarray, G: int):
    """One-vs-rest macro AUC, overall and per group: ``(float | None, [G] of float | None)``.

    Per class, over the classes with both positives and negatives (two classes: column 1 only,
    as sklearn). One score sort per class serves all groups (a stable sort by group keeps each
    group's samples in score order)."""
    C = prob.shape[1]
    classes = [1] if C == 2 else list(range(C))
    g_small = groups.astype(np.int16) if G < 2 ** 15 else groups  # radix sort for small ints
    zeros = np.zeros(len(y), dtype=np.int64)
    tot = np.zeros(G + 1)
    cnt = np.zeros(G + 1)
    for c in classes:
        score = np.ascontiguousarray(prob[:, c])
        order = np.argsort(score)
        auc_all, ok_all = _auc_sorted(score[order], (y[order] == c).astype(np.float64), zeros, 1)
        by_group = order[np.argsort(g_small[order], kind="stable")]
        auc_g, ok_g = _auc_sorted(score[by_group], (y[by_group] == c).astype(np.float64),
                                  groups[by_group], G)
        ok = np.r_[ok_g, ok_all]
        tot += np.where(ok, np.r_[auc_g, auc_all], 0.0)
        cnt += ok
    mean = [float(t / k) if k else None for t, k in zip(tot, cnt)]
    return mean[G], mean[:G]


def _bootstrap(counts: np.ndarray, resamples: int, seed: int,
               max_block: int = 2_000_000) -> dict[str, np.ndarray]:
    """Figures of ``resamples`` within-group bootstrap resamples, each with a leading
    ``[resamples]`` axis. A resample of group g's n_g samples has multinomial cell counts, so
    only the nonzero cells of ``counts[g]`` are drawn (memory ``resamples × cells``, in blocks)."""
    rng = np.random.default_rng(seed)
    G, C, _ = counts.shape
    tp = np.zeros((resamples, G, C))
    pos = np.zeros((resamples, G, C))
    pred = np.zeros((resamples, G, C))
    for g in range(G):
        flat = counts[g].reshape(-1)
        n_g = int(flat.sum())
        if n_g == 0:
            continue
        cells = np.flatnonzero(flat)               # sorted, hence grouped by true class
        t, p = cells // C, cells % C
        t_first = np.flatnonzero(np.r_[True, t[1:] != t[:-1]])
        by_p = np.argsort(p, kind="stable")
        p_sorted = p[by_p]
        p_first = np.flatnonzero(np.r_[True, p_sorted[1:] != p_sorted[:-1]])
        diag = t == p
        probs = flat[cells] / n_g
        block = max(1, max_block // len(cells))
        for s in range(0, resamples, block):
            e = min(resamples, s + block)
            draw = rng.multinomial(n_g, probs, size=e - s).astype(np.float64)   # [b, cells]
            pos[s:e, g, t[t_first]] = np.add.reduceat(draw, t_first, axis=1)
            pred[s:e, g, p_sorted[p_first]] = np.add.reduceat(draw[:, by_p], p_first, axis=1)
            tp[s:e, g, t[diag]] = draw[:, diag]
    return _figures(tp, pos, pred)


# --------------------------------------------------------------------------- accumulator
class ConfusionCounts:
    """Streaming accumulator of ``counts[G, C_true, C_pred]`` (int64), plus, when ``y_prob`` is
    given, a per-group calibration histogram and (``keep_scores``) the score rows for AUC.

    >>> acc = ConfusionCounts(num_classes=3, group_names=["I", "II"])
    >>> for y, yhat, g, prob in batches:      # doctest: +SKIP
    ...     acc.update(y, yhat, g, prob)
    >>> report = acc.report(bootstrap=1000)   # doctest: +SKIP
    """

    def __init__(self, num_classes: int, num_groups: int | None = None, *,
                 group_names=None, class_names=None, keep_scores: bool = True,
                 ece_bins: int = ECE_BINS):
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if len(class_names) != num_classes:
                raise UserError(f"{len(class_names)} class_names given for num_classes="
                                f"{num_classes}")
        if group_names is not None:
            group_names = [str(g) for g in group_names]
            if len(set(group_names)) != len(group_names):
                raise UserError(f"group_names must be distinct, got {group_names}")
            if num_groups is not None and num_groups != len(group_names):
                raise UserError(f"{len(group_names)} group_names given for num_groups="
                                f"{num_groups}")
            num_groups = len(group_names)
        if num_groups is None:
            raise UserError("ConfusionCounts needs num_groups or group_names")
        if int(num_classes) < 1 or int(num_groups) < 1:
            raise UserError(f"need at least one class and one group, got num_classes="
                            f"{num_classes}, num_groups={num_groups}")
        if int(ece_bins) < 1:
            raise UserError(f"ece_bins must be a positive number of bins, got {ece_bins}")
        self.num_classes = int(num_classes)
        self.num_groups = int(num_groups)
        self.class_names = class_names or [str(c) for c in range(self.num_classes)]
        self.group_names = group_names or [str(g) for g in range(self.num_groups)]
        self.keep_scores = bool(keep_scores)
        self.ece_bins = int(ece_bins)
        G, C, B = self.num_groups, self.num_classes, self.ece_bins
        self.counts = np.zeros((G, C, C), dtype=np.int64)
        self._bin_n = np.zeros((G, B), dtype=np.int64)       # samples per (group, bin)
        self._bin_conf = np.zeros((G, B))                     # Σ confidence
        self._bin_hit = np.zeros((G, B), dtype=np.int64)      # Σ correct
        self._scores: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._with_prob: bool | None = None                   # fixed by the first batch

    @classmethod
    def from_counts(cls, counts, *, group_names=None, class_names=None) -> "ConfusionCounts":
        """An accumulator holding ``counts[G, C, C]`` (no scores)."""
        counts = np.asarray(counts)
        if counts.ndim != 3 or counts.shape[1] != counts.shape[2]:
            raise UserError(f"counts must have shape [G, C, C], got {tuple(counts.shape)}")
        if (counts < 0).any() or not np.array_equal(counts, np.round(counts)):
            raise UserError("counts must be non-negative integers")
        acc = cls(counts.shape[1], counts.shape[0], group_names=group_names,
                  class_names=class_names)
        acc.counts += counts.astype(np.int64)
        return acc

    @property
    def n(self) -> np.ndarray:
        """Samples per group, ``[G]`` int64."""
        return self.counts.sum(axis=(1, 2))

    def update(self, y_true, y_pred, groups, y_prob=None) -> None:
        """Add a batch: ``y_true``, ``y_pred`` class indices ``[n]``, ``groups`` group indices (or
        names in ``group_names``) ``[n]``, optional ``y_prob`` ``[n, C]`` (numpy or torch)."""
        t = _class_indices(y_true, "y_true")
        n = len(t)
        p = _class_indices(y_pred, "y_pred")
        _check_length(n, p, "y_pred")
        g = _group_codes(groups, self.group_names, n)
        C, G = self.num_classes, self.num_groups
        _check_range(t, "y_true", C, "classes")
        _check_range(p, "y_pred", C, "classes")
        with_prob = y_prob is not None
        if self._with_prob is not None and with_prob != self._with_prob:
            raise UserError("y_prob was given for some batches but not for others; give it for "
                            "every batch or for none")
        prob = _scores(y_prob, n, C) if with_prob else None
        self._with_prob = with_prob
        self.counts += np.bincount((g * C + t) * C + p, minlength=G * C * C).reshape(G, C, C)
        if prob is not None:
            B = self.ece_bins
            conf = prob.max(axis=1)
            hit = prob.argmax(axis=1) == t
            cell = g * B + _ece_bin(conf, B)
            self._bin_n += np.bincount(cell, minlength=G * B).reshape(G, B)
            self._bin_conf += np.bincount(cell, weights=conf, minlength=G * B).reshape(G, B)
            self._bin_hit += np.bincount(cell[hit], minlength=G * B).reshape(G, B)
            if self.keep_scores:
                self._scores.append((t, g, np.array(prob, dtype=np.float64)))

    def merge(self, other: "ConfusionCounts") -> "ConfusionCounts":
        """Add another accumulator's counts (same classes, groups and bins) into this one."""
        if (other.num_classes, other.group_names, other.ece_bins) != (
                self.num_classes, self.group_names, self.ece_bins):
            raise UserError("cannot merge ConfusionCounts with different classes, groups or bins")
        if None not in (self._with_prob, other._with_prob) and self._with_prob != other._with_prob:
            raise UserError("cannot merge counts with y_prob into counts without it")
        self.counts += other.counts
        self._bin_n += other._bin_n
        self._bin_conf += other._bin_conf
        self._bin_hit += other._bin_hit
        if self.keep_scores:
            self._scores.extend(other._scores)
        if self._with_prob is None:
            self._with_prob = other._with_prob
        return self

    # ------------------------------------------------------------------ report
    def _auc(self):
        """(overall AUC, [G] per-group AUC or None) from the stored scores."""
        if not (self._with_prob and self.keep_scores):
            return None, None
        y = np.concatenate([s[0] for s in self._scores])
        g = np.concatenate([s[1] for s in self._scores])
        prob = np.concatenate([s[2] for s in self._scores])
        return _auc_ovr(y, g, prob, self.num_groups)

    def _ece(self):
        if not self._with_prob:
            return None, None
        gap = np.abs(self._bin_hit - self._bin_conf)          # n_b·|acc_b − conf_b|
        n = self._bin_n.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_group = gap.sum(axis=1) / n
        overall = float(np.abs(self._bin_hit.sum(0) - self._bin_conf.sum(0)).sum() / n.sum())
        return overall, per_group

    def report(self, *, bootstrap: int = 0, confidence: float = 0.95, seed: int = 0,
               meta: dict | None = None) -> "FairnessReport":
        """The :class:`FairnessReport` of everything added so far; ``bootstrap`` > 0 adds
        percentile intervals at ``confidence`` from that many within-group resamples."""
        bootstrap = int(bootstrap)
        if bootstrap < 0:
            raise UserError(f"bootstrap must be a number of resamples >= 0, got {bootstrap}")
        if not 0.0 < float(confidence) < 1.0:
            raise UserError(f"confidence must be a fraction in (0, 1), got {confidence}")
        n = self.n
        if n.sum() == 0:
            raise UserError("no samples to report on (every group is empty)")
        figs = _figures(*_cell_totals(self.counts))
        names = self.group_names
        present = [k for k in range(self.num_groups) if n[k] > 0]

        def by_group(arr):
            return {names[k]: float(arr[k]) for k in present}

        worst_k = present[int(np.argmin([figs["group_accuracy"][k] for k in present]))]
        auc, group_auc = self._auc()
        ece, group_ece = self._ece()
        rep_meta = {"empty_groups": [names[k] for k in range(self.num_groups) if n[k] == 0],
                    "ece_bins": self.ece_bins}
        rep_meta.update(meta or {})
        report = FairnessReport(
            **{k: float(figs[k]) for k in SCALAR_FIGURES},
            group_accuracy=by_group(figs["group_accuracy"]),
            group_balanced_accuracy=by_group(figs["group_balanced_accuracy"]),
            worst_group=names[worst_k],
            n={names[k]: int(n[k]) for k in range(self.num_groups)},
            num_classes=self.num_classes, class_names=list(self.class_names),
            group_names=list(names), auc=auc, ece=ece,
            group_auc=None if group_auc is None else {names[k]: group_auc[k] for k in present},
            group_ece=None if group_ece is None else by_group(group_ece),
            per_class={k: [float(v) for v in figs[k]]
                       for k in ("tpr_gap", "tnr_gap", "fpr_gap", "dp_gap")},
            confusion=self.counts.copy(), meta=rep_meta)
        if bootstrap:
            report.ci = _intervals(self.counts, bootstrap, confidence, seed, names, present)
        return report


def _intervals(counts, resamples, confidence, seed, names, present) -> dict:
    figs = _bootstrap(counts, resamples, seed)
    alpha = 1.0 - float(confidence)
    qs = [alpha / 2.0, 1.0 - alpha / 2.0]

    def interval(v):
        lo, hi = np.quantile(v, qs, axis=0)
        return [float(lo), float(hi)]

    ci = {"method": "percentile bootstrap, resampling samples within each group",
          "confidence": float(confidence), "resamples": int(resamples), "seed": int(seed)}
    ci.update({k: interval(figs[k]) for k in SCALAR_FIGURES})
    ci["group_accuracy"] = {names[k]: interval(figs["group_accuracy"][:, k]) for k in present}
    return ci


# --------------------------------------------------------------------------- one-shot
def fairness_report(y_true, y_pred, groups, y_prob=None, *, group_names=None, class_names=None,
                    num_classes: int | None = None, bootstrap: int = 0, confidence: float = 0.95,
                    seed: int = 0, ece_bins: int = ECE_BINS,
                    meta: dict | None = None) -> "FairnessReport":
    """The :class:`FairnessReport` of one set of predictions.

    ``y_true``, ``y_pred``: class indices ``[n]``; ``groups``: ``[n]`` group indices or names;
    ``y_prob``: optional ``[n, C]`` probabilities (binary: ``[n]`` = P(class 1) also works).
    Without ``group_names``, integer groups are named ``"0".."max"`` and named groups sort. The
    number of classes is ``len(class_names)``, else ``num_classes``, else ``y_prob``'s columns,
    else the largest label + 1 (at least 2). ``bootstrap`` > 0 adds percentile confidence
    intervals (``confidence``, ``seed``) for the count-derived figures.
    """
    t = _class_indices(y_true, "y_true")
    if len(t) == 0:
        raise UserError("no samples to report on (y_true is empty)")
    p = _class_indices(y_pred, "y_pred")
    _check_length(len(t), p, "y_pred")
    if group_names is None:
        g = _to_numpy(groups)
        if g.dtype.kind in "OUS":
            group_names = sorted(set(g.astype(str).tolist()))
        else:
            codes = _group_codes(g, None, len(t))
            group_names = [str(k) for k in range(int(codes.max()) + 1)]
    if class_names is not None:
        C = len(class_names)
        if num_classes is not None and int(num_classes) != C:
            raise UserError(f"{C} class_names given for num_classes={num_classes}")
    elif num_classes is not None:
        C = int(num_classes)
    elif y_prob is not None and _to_numpy(y_prob).ndim == 2:
        C = int(_to_numpy(y_prob).shape[1])
    else:
        C = max(2, int(max(t.max(), p.max())) + 1)
    acc = ConfusionCounts(C, group_names=group_names, class_names=class_names,
                          ece_bins=ece_bins)
    acc.update(t, p, groups, y_prob)
    return acc.report(bootstrap=bootstrap, confidence=confidence, seed=seed, meta=meta)


# --------------------------------------------------------------------------- the report
@dataclass
class FairnessReport:
    """Fairness figures of one model on one split (docs/design.md §2); fractions in [0, 1].

    Group dicts map group name → value and leave out empty groups (see ``policy``); ``n`` lists
    every group. ``per_class`` holds the per-class gaps (``tpr_gap``, ``tnr_gap``, ``fpr_gap``,
    ``dp_gap``, each ``[C]``) behind eopp/eodd/dp. ``confusion`` is ``counts[G, C, C]``.
    ``ci`` maps each figure to ``[low, high]`` (``group_accuracy`` to a dict) when bootstrapped.
    """

    accuracy: float
    balanced_accuracy: float
    group_accuracy: dict[str, float]
    avg_acc: float
    worst_acc: float
    worst_group: str
    acc_gap: float
    acc_gap_maxmin: float
    eopp0: float
    eopp1: float
    eodd: float
    eodd_half: float
    eodd_max: float
    dp: float
    dp_sum: float
    n: dict[str, int]
    num_classes: int
    class_names: list[str]
    group_names: list[str]
    group_balanced_accuracy: dict[str, float] = field(default_factory=dict)
    auc: float | None = None
    ece: float | None = None
    group_auc: dict[str, float | None] | None = None
    group_ece: dict[str, float] | None = None
    per_class: dict[str, list[float]] = field(default_factory=dict)
    confusion: np.ndarray | None = None
    ci: dict | None = None
    policy: dict = field(default_factory=lambda: dict(POLICY))
    meta: dict = field(default_factory=dict)
    schema: str = SCHEMA

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        """JSON-ready dict; ``confusion`` as sparse cells ``[group, true, pred, count]``."""
        d = {"schema": self.schema}
        for k in (*SCALAR_FIGURES[:4], "worst_group", *SCALAR_FIGURES[4:]):
            d[k] = getattr(self, k)
        d.update(group_accuracy=dict(self.group_accuracy),
                 group_balanced_accuracy=dict(self.group_balanced_accuracy),
                 auc=self.auc, ece=self.ece,
                 group_auc=None if self.group_auc is None else dict(self.group_auc),
                 group_ece=None if self.group_ece is None else dict(self.group_ece),
                 n=dict(self.n), num_classes=self.num_classes,
                 class_names=list(self.class_names), group_names=list(self.group_names),
                 per_class={k: list(v) for k, v in self.per_class.items()},
                 ci=self.ci, policy=dict(self.policy), meta=dict(self.meta))
        if self.confusion is not None:
            c = np.asarray(self.confusion)
            cells = np.argwhere(c > 0)
            d["confusion"] = {"shape": list(c.shape),
                              "cells": [[*map(int, ix), int(c[tuple(ix)])] for ix in cells]}
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "FairnessReport":
        where = f"fairness report {source}"
        if not isinstance(d, dict):
            raise UserError(f"{where}: expected a JSON object")
        if d.get("schema") != SCHEMA:
            raise UserError(f"{where}: schema is {d.get('schema')!r}, expected {SCHEMA!r}")
        required = (*SCALAR_FIGURES, "worst_group", "group_accuracy", "n", "num_classes",
                    "class_names", "group_names")
        missing = [k for k in required if k not in d]
        if missing:
            raise UserError(f"{where}: missing field(s) {missing}")
        confusion = None
        if d.get("confusion") is not None:
            conf = d["confusion"]
            try:
                confusion = np.zeros(conf["shape"], dtype=np.int64)
                for g, t, p, c in conf["cells"]:
                    confusion[g, t, p] = c
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise UserError(f"{where}: field 'confusion' is malformed ({exc})") from None
            expect = (len(d["group_names"]), d["num_classes"], d["num_classes"])
            if confusion.shape != expect:
                raise UserError(f"{where}: 'confusion' has shape {confusion.shape}, expected "
                                f"[groups, classes, classes] = {list(expect)}")
        try:
            return cls(
                **{k: float(d[k]) for k in SCALAR_FIGURES}, worst_group=str(d["worst_group"]),
                group_accuracy={str(k): float(v) for k, v in d["group_accuracy"].items()},
                group_balanced_accuracy={str(k): float(v) for k, v in
                                         (d.get("group_balanced_accuracy") or {}).items()},
                n={str(k): int(v) for k, v in d["n"].items()},
                num_classes=int(d["num_classes"]),
                class_names=[str(c) for c in d["class_names"]],
                group_names=[str(g) for g in d["group_names"]],
                auc=_opt_float(d.get("auc")), ece=_opt_float(d.get("ece")),
                group_auc=_opt_dict(d.get("group_auc")),
                group_ece=_opt_dict(d.get("group_ece")),
                per_class={k: [float(x) for x in v] for k, v in
                           (d.get("per_class") or {}).items()},
                confusion=confusion, ci=d.get("ci"), policy=dict(d.get("policy") or POLICY),
                meta=dict(d.get("meta") or {}))
        except (TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{where}: a field has the wrong type ({exc})") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the report as JSON, atomically."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FairnessReport":
        return cls.from_dict(read_json(path, what="fairness report"), source=str(Path(path)))

    # ------------------------------------------------------------------ views
    def to_rows(self) -> list[Table]:
        """Tables for ``--format table``: the summary ``(metric, value)`` and per-group
        ``(group, n, accuracy, auc, ece)``; with intervals, low/high columns follow."""
        ci = self.ci or {}
        summary_cols = ["metric", "value"] + (["ci_low", "ci_high"] if ci else [])
        summary = []
        for k in (*SCALAR_FIGURES[:4], "worst_group", *SCALAR_FIGURES[4:], "auc", "ece"):
            row = [k, getattr(self, k)]
            if ci:
                row += list(ci.get(k) or [None, None])
            summary.append(tuple(row))
        group_cols = ["group", "n", "accuracy", "auc", "ece"] + (
            ["acc_low", "acc_high"] if ci else [])
        group_rows = []
        for g in self.group_names:
            row = [g, self.n.get(g, 0), self.group_accuracy.get(g),
                   (self.group_auc or {}).get(g), (self.group_ece or {}).get(g)]
            if ci:
                row += list(ci.get("group_accuracy", {}).get(g) or [None, None])
            group_rows.append(tuple(row))
        return [Table("fairness", summary_cols, summary),
                Table("groups", group_cols, group_rows)]

    def __repr__(self) -> str:
        return (f"FairnessReport(accuracy={self.accuracy:.4f}, avg_acc={self.avg_acc:.4f}, "
                f"worst_acc={self.worst_acc:.4f} ({self.worst_group}), "
                f"eodd={self.eodd:.4f}, n={sum(self.n.values())})")


def _opt_float(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _opt_dict(d):
    return None if d is None else {str(k): _opt_float(v) for k, v in d.items()}
