"""What a search recommends, and how sure that is: the recommended plan at a budget, the best
baseline beside it, paired bootstrap intervals over the test images, and the refined plans'
verdicts (docs/design.md §7: a difference whose interval contains 0 is a tie).

Inputs: the :class:`SearchResults` of ``reports/search_test.json`` and the per-image test
predictions that the test stage keeps (``reports/test_predictions.npz``: ``y_true``,
``groups``, and one ``pred:<id>`` array of predicted classes per evaluated plan; records name
theirs in ``pred``). Everything here returns typed records (``_results``); the CLI and the
report only word and draw them.
"""

from __future__ import annotations

import shlex
import zipfile
from pathlib import Path

import numpy as np

from fqopt._io import atomic_path
from fqopt.search._defaults import DEFAULT_BUDGET
from fqopt.search._results import (BriefFigures, BudgetMark, Comparison, Difference, PlanRecord,
                                   RecordBrief, RefinedVerdict, SearchResults, SplitFigures,
                                   Summary)
from fqopt.units import within_budget

PREDICTIONS_FILE = "test_predictions.npz"
#: budgets at which the report marks a recommended plan
REPORT_BUDGETS = (3.0, 3.5, 4.0, 4.5, 5.5)
#: baselines a recommendation is compared with (docs/design.md §6); ``ladder`` is fqopt's own
BASELINE_KINDS = ("uniform", "uniform-all", "fairquant", "hawq", "mct")
#: a baseline counts at a budget when its average bits are within this of it (uniform 4-bit
#: with the stem and head at 8 bits has a little over 4)
BITS_SLACK = 0.05
RESAMPLES = 2000
CONFIDENCE = 0.95


# --------------------------------------------------------------------------- predictions
class Predictions:
    """Per-image test predictions: ``y_true`` ``[n]``, ``groups`` ``[n]`` (indices into
    ``group_names``) and ``pred[id]`` ``[n]`` predicted classes."""

    def __init__(self, y_true, groups, group_names, pred: dict | None = None):
        self.y_true = np.asarray(y_true, dtype=np.int64)
        self.groups = np.asarray(groups, dtype=np.int64)
        self.group_names = [str(g) for g in group_names]
        self.pred: dict[str, np.ndarray] = dict(pred or {})

    def add(self, key: str, y_pred) -> str:
        self.pred[key] = np.asarray(y_pred, dtype=np.int16)
        return key

    def correct(self, key: str) -> np.ndarray:
        return self.pred[key].astype(np.int64) == self.y_true

    def save(self, path) -> None:
        arrays = {"y_true": self.y_true.astype(np.int16), "groups": self.groups.astype(np.int16),
                  "group_names": np.asarray(self.group_names)}
        arrays.update({f"pred:{k}": v for k, v in self.pred.items()})
        with atomic_path(Path(path)) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path) -> "Predictions | None":
        path = Path(path)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                pred = {k[len("pred:"):]: z[k] for k in z.files if k.startswith("pred:")}
                return cls(z["y_true"], z["groups"], z["group_names"].tolist(), pred)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            return None  # a damaged file: comparisons fall back to unpaired intervals


def paired_bootstrap(pred: Predictions, key_a: str, key_b: str, *,
                     resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                     seed: int = 0) -> Comparison:
    """``a − b`` on ``worst_acc`` and ``avg_acc``, with percentile intervals from a paired
    bootstrap over the test images (resampled within each group, group sizes fixed, the same
    images for both plans). Each image is one of four cells (a right/wrong × b right/wrong), so
    a group's resample is one multinomial draw over its four cell counts."""
    ca, cb = pred.correct(key_a), pred.correct(key_b)
    rng = np.random.default_rng(seed)
    present = [g for g in range(len(pred.group_names)) if np.any(pred.groups == g)]
    acc_a = np.zeros((resamples, len(present)))
    acc_b = np.zeros((resamples, len(present)))
    point_a, point_b = [], []
    for j, g in enumerate(present):
        m = pred.groups == g
        a, b = ca[m], cb[m]
        n = int(m.sum())
        cells = np.array([np.sum(a & b), np.sum(a & ~b), np.sum(~a & b), np.sum(~a & ~b)],
                         dtype=np.float64)
        draw = rng.multinomial(n, cells / n, size=resamples)
        acc_a[:, j] = (draw[:, 0] + draw[:, 1]) / n
        acc_b[:, j] = (draw[:, 0] + draw[:, 2]) / n
        point_a.append(a.mean())
        point_b.append(b.mean())
    alpha = 1.0 - confidence
    out = Comparison(method="paired percentile bootstrap over test images, within groups",
                     resamples=int(resamples), confidence=float(confidence), seed=int(seed))
    for name, fa, fb, pa, pb in (
            ("worst_acc", acc_a.min(axis=1), acc_b.min(axis=1), min(point_a), min(point_b)),
            ("avg_acc", acc_a.mean(axis=1), acc_b.mean(axis=1), float(np.mean(point_a)),
             float(np.mean(point_b)))):
        d = fa - fb
        lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
        setattr(out, name, Difference(diff=float(pa - pb), ci=[float(lo), float(hi)],
                                      verdict=verdict(float(lo), float(hi))))
    return out


def unpaired_difference(rep_a: SplitFigures, rep_b: SplitFigures,
                        figure: str = "worst_acc") -> Difference | None:
    """Without predictions: the difference of two reports' figures and a conservative interval
    (the difference of the two bootstrap intervals' far ends)."""
    ca, cb = rep_a.interval(figure), rep_b.interval(figure)
    if ca is None or cb is None:
        return None
    lo, hi = ca[0] - cb[1], ca[1] - cb[0]
    return Difference(diff=float(rep_a.get(figure) - rep_b.get(figure)),
                      ci=[float(lo), float(hi)], verdict=verdict(lo, hi),
                      method="difference of unpaired intervals")


def verdict(lo: float, hi: float) -> str:
    """``better`` / ``worse`` when the interval of ``a − b`` excludes 0, else ``tie``."""
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "tie"


# --------------------------------------------------------------------------- choices
def best_within(items, budget: float, figures, slack: float = 0.0):
    """The item with the best ``figures(item) = (worst_acc, avg_acc)`` (then fewer bits) among
    those within ``budget`` (+ ``slack``) average bits (:func:`~fqopt.units.within_budget`);
    items whose ``figures`` is None are left out. None when no item qualifies. The one rule
    behind every recommendation."""
    cands = [(figures(r), r) for r in items if within_budget(r.avg_bits, budget + slack)]
    cands = [(f, r) for f, r in cands if f is not None]
    if not cands:
        return None
    return max(cands, key=lambda fr: (fr[0][0], fr[0][1], -fr[1].avg_bits))[1]


def _search_figures(rec):
    return None if not rec.search else (rec.search.worst_acc, rec.search.avg_acc)


def recommend(results: SearchResults, budget: float = DEFAULT_BUDGET) -> PlanRecord | None:
    """The Pareto plan to use at ≤ ``budget`` average bits: the best *search* ``worst_acc``
    (then ``avg_acc``, then fewer bits). The test split does not choose it."""
    return best_within(results.pareto, budget, _search_figures)


def best_baseline(results: SearchResults, budget: float = DEFAULT_BUDGET) -> PlanRecord | None:
    """The strongest baseline (uniform, FairQuant, HAWQ-style, Sony MCT) at ≤ ``budget`` (+ a little)
    average bits, by *test* ``worst_acc``: the comparison is made as hard as it can be."""
    split = "test" if any(b.test for b in results.baselines) else "search"
    cands = [b for b in results.baselines if b.kind in BASELINE_KINDS]

    def figures(b):
        rep = b.figures(split)
        return None if not rep else (rep.worst_acc, rep.avg_acc)

    return best_within(cands, budget, figures, slack=BITS_SLACK)


def compare(pred: Predictions | None, a, b) -> Comparison | None:
    """``a − b`` on the test split (records with ``test`` and ``pred``): paired when both have
    predictions, else unpaired."""
    if not a.test or not b.test:
        return None
    if pred is not None and a.pred in pred.pred and b.pred in pred.pred:
        return paired_bootstrap(pred, a.pred, b.pred)
    w = unpaired_difference(a.test, b.test, "worst_acc")
    if w is None:
        return None
    method, w.method = w.method, None
    return Comparison(method=method, worst_acc=w,
                      avg_acc=unpaired_difference(a.test, b.test, "avg_acc"))


def export_command(run_path, plan_file: str, checkpoint: str | None = None) -> str:
    plan = Path(run_path) / plan_file
    out = Path(run_path) / "export" / (Path(plan_file).stem + ".safetensors")
    # the plan file records its quantizer, which export applies: no --quantizer needed
    cmd = ["fqopt", "export", "--run", str(run_path), "--plan", str(plan), "--out", str(out)]
    if checkpoint:
        cmd += ["--checkpoint", str(checkpoint)]
    return " ".join(shlex.quote(c) for c in cmd)


def dashboard_command(storage_url: str, artifact_dir=None) -> str:
    cmd = ["optuna-dashboard", storage_url]
    if artifact_dir is not None:
        cmd += ["--artifact-dir", str(artifact_dir)]
    return " ".join(shlex.quote(c) for c in cmd)


def summarize(results: SearchResults, pred: Predictions | None = None, *,
              budget: float = DEFAULT_BUDGET, run_path=None) -> Summary:
    """The decision a search ends with (stored as ``results.summary``): the recommended plan
    at ``budget``, the best baseline there and the paired comparison, the refined plans against
    their sources, and the recommended plan at each of :data:`REPORT_BUDGETS`."""
    run_path = run_path or results.run.path or "."
    rec = recommend(results, budget)
    base = best_baseline(results, budget)
    out = Summary(budget=float(budget), recommended=RecordBrief.of(rec),
                  best_baseline=RecordBrief.of(base),
                  comparison=None if rec is None or base is None else compare(pred, rec, base),
                  export_command=None if rec is None or not rec.plan_file else
                  export_command(run_path, rec.plan_file))
    by_index = {r.index: r for r in results.pareto}
    for r in results.refined:
        src = by_index.get(r.from_index)
        item = RefinedVerdict(label=r.label, plan_file=r.plan_file,
                              source_file=None if src is None else src.plan_file,
                              avg_bits=r.avg_bits, test=BriefFigures.of(r.test),
                              source_test=None if src is None else BriefFigures.of(src.test),
                              comparison=None if src is None else compare(pred, r, src))
        # which to deploy is never chosen on the test split. Fine-tuning: always the fine-tuned
        # model — on benchmarks/frontier.py (6 models, 6 budgets) it beat choosing between it
        # and the static plan by search-split worst_acc, whose ~230 type-VI images are too few
        # to choose on. BAQ (no measured gain): only if the search split says it is better.
        s_new = r.search.worst_acc if r.search else None
        s_old = None if src is None or not src.search else src.search.worst_acc
        item.search_worst_acc = {"refined": s_new, "static": s_old}
        item.use_refined = bool(r.mode == "finetune" or (
            s_new is not None and s_old is not None and s_new > s_old))
        if item.use_refined and r.plan_file:
            item.export_command = export_command(run_path, r.plan_file, r.checkpoint)
        out.refined.append(item)
    for cap in sorted(set(REPORT_BUDGETS) | {float(budget)}):
        r = recommend(results, cap)
        if r is not None:
            out.by_budget.append(BudgetMark(budget=cap, index=r.index, trial=r.trial,
                                            avg_bits=r.avg_bits, plan_file=r.plan_file))
    return out


def describe(cmp: Comparison | None, figure: str = "worst_acc") -> str:
    """``+0.012 [−0.020, +0.041], a tie`` (a − b with its interval and what it means)."""
    c = None if cmp is None else cmp.figure(figure)
    if c is None:
        return "no comparison"
    lo, hi = c.ci
    word = {"better": "better", "worse": "worse", "tie": "a tie (the interval contains 0)"}
    return f"{c.diff:+.3f} [{lo:+.3f}, {hi:+.3f}], {word[c.verdict]}"


def interval_text(rep: SplitFigures | BriefFigures | None, figure: str) -> str:
    """``0.712 [0.650, 0.771]``: a figure with its interval (``–`` when unknown)."""
    if not rep:
        return "–"
    v = rep.get(figure)
    ci = (rep.get("ci") or {}).get(figure)
    if v is None:
        return "–"
    if not ci:
        return f"{v:.3f}"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def group_rates(rep: SplitFigures | dict) -> dict:
    """Per group and class: sensitivity (TPR, one class against the rest) and specificity
    (TNR), from the report's confusion cells. ``{group: {class: (sens, spec)}}`` with ``None``
    where undefined (no positive or no negative image of that class in the group)."""
    conf = rep.get("confusion")
    if not conf:
        return {}
    G, C, _ = conf["shape"]
    counts = np.zeros((G, C, C))
    for g, t, p, n in conf["cells"]:
        counts[g, t, p] = n
    names = rep.get("group_names") or [str(g) for g in range(G)]
    classes = rep.get("class_names") or [str(c) for c in range(C)]
    out = {}
    for g in range(G):
        m = counts[g]
        total = m.sum()
        if total == 0:
            continue
        row = {}
        for c in range(C):
            pos = m[c].sum()
            tp = m[c, c]
            neg = total - pos
            tn = total - pos - m[:, c].sum() + tp
            row[classes[c]] = (None if pos == 0 else float(tp / pos),
                               None if neg == 0 else float(tn / neg))
        out[names[g]] = row
    return out
