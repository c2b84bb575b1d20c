"""Figures of a search as backend-neutral info objects (Optuna's ``visualization`` layout).

Each ``*_info`` function computes plain data (tested) from the :class:`SearchResults` of
``reports/search_test.json`` and the Optuna study; the matplotlib renderers in ``_plots`` only
draw them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import optuna
from optuna.trial import TrialState

from fqopt.search._results import PlanRecord, RefinedRecord, SearchResults, SplitFigures
from fqopt.search._seeds import ATTR_KIND, ATTR_SEED
from fqopt.search._storage import DIRECTIONS, METRIC_NAMES
from fqopt.search._verdict import REPORT_BUDGETS, recommend
from fqopt.units import within_budget

#: the kinds of baseline points, their legend names and marker styles
BASELINE_STYLE = {
    "uniform": ("uniform (stem, head 8-bit)", "s", "#7f7f7f"),
    "uniform-all": ("uniform, all layers", "s", "#c7c7c7"),
    "fairquant": ("FairQuant static", "^", "#d62728"),
    "hawq": ("HAWQ-style (mean)", "v", "#9467bd"),
    "ladder": ("fqopt solver (worst)", "D", "#2ca02c"),
}

@dataclass
class Point:
    avg_bits: float
    avg_acc: float
    worst_acc: float
    label: str = ""
    trial: int | None = None
    kind: str = "sampled"
    #: ``{"avg_acc": [lo, hi], "worst_acc": [lo, hi]}`` (bootstrap), when known
    ci: dict | None = None


@dataclass
class Recommended:
    """The plan recommended at ``budget`` average bits (best search worst_acc within it), and
    at every budget of ``budgets`` (it may be the choice at several)."""

    budget: float
    point: Point
    index: int | None = None
    budgets: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        bs = self.budgets or [self.budget]
        return f"≤{bs[0]:g}b" if len(bs) == 1 else f"≤{bs[0]:g}–{bs[-1]:g}b"


@dataclass
class ParetoFrontInfo:
    """Points of the two panels (``avg_acc`` and ``worst_acc`` against ``avg_bits``).

    ``split``: where the accuracies come from. ``trials``: every complete trial (only for the
    search split, where all were evaluated); ``pareto``: the Pareto plans; ``baselines``: seed
    baselines by kind; ``fp32``: ``{"avg_acc", "worst_acc"}`` of the FP model.
    """

    split: str
    pareto: list[Point]
    trials: list[Point] = field(default_factory=list)
    baselines: dict[str, list[Point]] = field(default_factory=dict)
    refined: list[Point] = field(default_factory=list)
    fp32: dict | None = None
    #: the recommended plan at each budget (marked on the front)
    recommended: list[Recommended] = field(default_factory=list)
    #: per metric: the y range that shows the plans that matter, and the plans below it
    #: (collapsed ones, e.g. uniform 2-bit), listed beside the plot instead of squashing it
    ylim: dict[str, tuple[float, float]] = field(default_factory=dict)
    collapsed: dict[str, list[Point]] = field(default_factory=dict)


def _point(rec: PlanRecord | RefinedRecord, split: str, kind: str | None = None
           ) -> Point | None:
    rep = rec.figures(split)
    if not rep:
        return None
    ci = {k: list(rep.ci[k]) for k in ("avg_acc", "worst_acc") if rep.ci.get(k)} or None
    return Point(avg_bits=float(rec.avg_bits), avg_acc=float(rep.avg_acc),
                 worst_acc=float(rep.worst_acc), label=rec.label, trial=rec.trial,
                 kind=kind or rec.kind, ci=ci)


def pareto_front_info(results: SearchResults, *, split: str = "test", study=None,
                      budgets=None) -> ParetoFrontInfo:
    """The Pareto front on ``split`` (``test`` or ``search``); with ``study`` and the search
    split, every complete trial is added as background. ``budgets``: where to mark the
    recommended plan (default :data:`fqopt.search._verdict.REPORT_BUDGETS`)."""
    pareto = [p for p in (_point(r, split) for r in results.pareto) if p]
    baselines: dict[str, list[Point]] = {}
    for rec in results.baselines:
        if rec.kind not in BASELINE_STYLE:
            continue
        p = _point(rec, split, rec.kind)
        if p:
            baselines.setdefault(rec.kind, []).append(p)
    for pts in baselines.values():
        pts.sort(key=lambda p: p.avg_bits)
    refined = [p for p in (_point(r, split, "refined") for r in results.refined) if p]
    trials = []
    if study is not None and split == "search":
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            trials.append(Point(avg_bits=t.values[2], avg_acc=t.values[0], worst_acc=t.values[1],
                                trial=t.number, kind=t.user_attrs.get(ATTR_KIND, "sampled")))
    fp = results.fp32.get(split)
    fp32 = None if not fp else {"avg_acc": fp.avg_acc, "worst_acc": fp.worst_acc}
    budgets = sorted(set(budgets if budgets is not None else REPORT_BUDGETS))
    recommended, seen = [], {}
    for b in budgets:
        r = recommend(results, b)
        p = None if r is None else _point(r, split)
        if p is None:
            continue
        if r.trial in seen:  # the same plan at a larger budget: widen its label
            seen[r.trial].budgets.append(b)
            continue
        seen[r.trial] = Recommended(budget=b, point=p, index=r.index, budgets=[b])
        recommended.append(seen[r.trial])
    info = ParetoFrontInfo(split=split, pareto=sorted(pareto, key=lambda p: p.avg_bits),
                           trials=trials, baselines=baselines, refined=refined, fp32=fp32,
                           recommended=recommended)
    for metric in ("avg_acc", "worst_acc"):
        info.ylim[metric], info.collapsed[metric] = _visible_range(info, metric)
    return info


def _visible_range(info: ParetoFrontInfo, metric: str):
    """``((low, high), collapsed points)``: the cluster near the top, where plans compete;
    collapsed plans (far below: 2-bit uniform and the like) would squash it to a line."""
    pts = info.pareto + info.refined + [p for ps in info.baselines.values() for p in ps]
    ys = [getattr(p, metric) for p in pts]
    if info.fp32:
        ys.append(info.fp32[metric])
    if not ys:
        return (0.0, 1.0), []
    top, mid = max(ys), float(np.median(ys))
    good = [y for y in ys if y >= top - max(0.05, 2.5 * (top - mid))]
    lo = min(good)
    # room for the intervals (error bars) of the cluster, then of every point that shows
    pad = max(0.01, 0.06 * (top - lo))
    low = lo - pad
    for _ in range(2):
        los = [p.ci[metric][0] for p in pts if p.ci and metric in p.ci
               and getattr(p, metric) >= low]
        low = max(0.0, min([low] + [v - 0.005 for v in los]))
    his = [p.ci[metric][1] for p in pts if p.ci and metric in p.ci]
    high = min(1.0, max([top + pad] + [v + 0.005 for v in his]))
    collapsed = sorted((p for p in pts if getattr(p, metric) < low),
                       key=lambda p: (p.avg_bits, getattr(p, metric)))
    return (low, high), collapsed


# --------------------------------------------------------------------------- chosen plans
@dataclass
class ChosenPlan:
    """A Pareto plan picked to look at closely: the best at ≤ ``cap`` average bits."""

    cap: float
    record: PlanRecord


def chosen_plans(results: SearchResults, caps=REPORT_BUDGETS) -> list[ChosenPlan]:
    """A few Pareto plans to look at closely: for each cap on average bits, the plan with the
    best *search* ``worst_acc`` within it (chosen without looking at the test split)."""
    out, seen = [], set()
    for cap in caps:
        best = recommend(results, cap)
        if best is None or best.trial in seen:
            continue
        seen.add(best.trial)
        out.append(ChosenPlan(cap=cap, record=best))
    return out


@dataclass
class GroupAccuracyInfo:
    """Per-group accuracy bars: ``series`` is a list of ``(label, [accuracy per group])``;
    ``intervals`` (parallel to ``series``) ``[(lo, hi) or None per group]`` (95 % bootstrap)."""

    split: str
    groups: list[str]
    n: dict[str, int]
    series: list[tuple[str, list[float]]]
    intervals: list[list[tuple[float, float] | None]] = field(default_factory=list)


def group_accuracy_info(results: SearchResults, *, split: str = "test",
                        chosen: list[ChosenPlan] | None = None,
                        uniform_bits: int = 4) -> GroupAccuracyInfo:
    chosen = chosen_plans(results) if chosen is None else chosen
    fp = results.fp32.get(split)
    groups = (fp.group_names if fp else []) or list(results.run.groups)
    series, intervals = [], []

    def accs(rep: SplitFigures):
        ci = rep.ci.get("group_accuracy") or {}
        intervals.append([tuple(ci[g]) if g in ci else None for g in groups])
        return [float(rep.group_accuracy.get(g, math.nan)) for g in groups]

    shown = set()
    if fp:
        series.append(("FP32", accs(fp)))
    uni = results.baseline(f"uniform:{uniform_bits}")
    if uni and uni.figures(split):
        series.append((f"uniform {uniform_bits}-bit ({uni.avg_bits:.2f} b)",
                       accs(uni.figures(split))))
        shown.add(uni.trial)
    fq = [b for b in results.baselines if b.kind == "fairquant" and b.figures(split)
          and abs(b.avg_bits - uniform_bits) < 0.05]
    if fq:  # FairQuant at matched bits: the one the search split liked best
        best = max(fq, key=lambda b: b.search.worst_acc)
        series.append((f"{best.label} ({best.avg_bits:.2f} b)", accs(best.figures(split))))
        shown.add(best.trial)
    for c in chosen:
        r = c.record
        if r.figures(split) and r.trial not in shown:
            series.append((f"pareto-{r.index:02d}: {r.label} ({r.avg_bits:.2f} b)",
                           accs(r.figures(split))))
    return GroupAccuracyInfo(split=split, groups=groups, n=dict(fp.n) if fp else {},
                             series=series, intervals=intervals)


@dataclass
class LayerBitsInfo:
    """Bits per layer: ``layers`` in model order, ``params`` weights per layer, and ``series``
    ``(label, mean bits per layer)``; ``heatmap`` ``[L, Cmax]`` per-channel bits (NaN padding)
    of ``heatmap_label``'s plan."""

    layers: list[str]
    params: list[int]
    series: list[tuple[str, list[float]]]
    heatmap: np.ndarray | None = None
    heatmap_label: str = ""
    bits: list[int] = field(default_factory=list)


def layer_bits_info(plans: list[tuple[str, object]], *, heatmap_index: int = 0
                    ) -> LayerBitsInfo:
    """``plans``: ``(label, AllocationPlan)``, all of one model."""
    if not plans:
        return LayerBitsInfo(layers=[], params=[], series=[])
    first = plans[0][1]
    layers = list(first.assignments)
    params = [int(np.prod(first.shapes[n])) for n in layers]
    series = []
    all_bits = set()
    for label, plan in plans:
        lb = plan.layer_bits()
        means = []
        for n in layers:
            b = lb[n]
            all_bits.update(int(x) for x in np.unique(b))
            means.append(float(np.mean(b)))
        series.append((label, means))
    label, plan = plans[min(heatmap_index, len(plans) - 1)]
    lb = plan.layer_bits()
    width = max(len(lb[n]) for n in layers)
    heat = np.full((len(layers), width), np.nan)
    for i, n in enumerate(layers):
        heat[i, :len(lb[n])] = lb[n]
    return LayerBitsInfo(layers=layers, params=params, series=series, heatmap=heat,
                         heatmap_label=label, bits=sorted(all_bits))


@dataclass
class HistoryInfo:
    """Optimisation history of one objective: per complete trial (in trial order) its value,
    its average bits, whether it was a seed, and the best value so far among trials at or below
    ``cap`` average bits (None: all trials)."""

    target: str
    direction: str
    numbers: list[int]
    values: list[float]
    bits: list[float]
    seeded: list[bool]
    best: list[float]
    cap: float | None = None


def history_info(study, *, target: int = 1, cap: float | None = 4.5) -> HistoryInfo:
    trials = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                    key=lambda t: t.number)
    sign = 1.0 if DIRECTIONS[target] == "maximize" else -1.0
    values, bits, best, cur = [], [], [], -math.inf
    for t in trials:
        v = float(t.values[target])
        values.append(v)
        bits.append(float(t.values[2]))
        if cap is None or within_budget(t.values[2], cap):
            cur = max(cur, sign * v)
        best.append(sign * cur if math.isfinite(cur) else math.nan)
    return HistoryInfo(target=METRIC_NAMES[target], direction=DIRECTIONS[target],
                       numbers=[t.number for t in trials], values=values, bits=bits,
                       seeded=[bool(t.user_attrs.get(ATTR_SEED)) for t in trials],
                       best=best, cap=cap)


@dataclass
class ImportanceInfo:
    """Parameter importances (fANOVA, normalised) per objective over the *sampled* trials (seed
    trials left out); ``message`` when there is too little to say (fewer than ``min_trials``
    sampled trials, or one parameter)."""

    params: list[str]
    importances: dict[str, dict[str, float]]
    message: str = ""


def importance_info(study, *, min_trials: int = 8, seed: int = 0) -> ImportanceInfo:
    # seed trials sit where the baselines are, not where the sampler put them: importances
    # describe the sampled trials only (an in-memory copy of them)
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if not t.user_attrs.get(ATTR_SEED)]
    if len(trials) < min_trials:
        return ImportanceInfo([], {}, f"only {len(trials)} complete sampled trials (seed trials "
                                      f"left out); importances need at least {min_trials}")
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "a new study created in memory"
    try:
        sampled = optuna.create_study(directions=[d.name.lower() for d in study.directions])
    finally:
        optuna.logging.set_verbosity(level)
    sampled.add_trials(trials)
    out: dict[str, dict[str, float]] = {}
    params: list[str] = []
    skipped = []
    for i, name in enumerate(METRIC_NAMES):
        if len({t.values[i] for t in trials}) < 2:
            skipped.append(f"{name} is the same in every sampled trial")
            continue
        try:
            imp = optuna.importance.get_param_importances(
                sampled, target=lambda t, i=i: t.values[i],
                evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
        except (RuntimeError, ValueError) as exc:
            skipped.append(f"{name}: {exc}")
            continue
        out[name] = {k: float(v) for k, v in imp.items()}
        params = params or list(imp)
    note = "; ".join(skipped)
    if not out:
        return ImportanceInfo([], {}, f"importances unavailable: {note}")
    if len(params) < 2:
        return ImportanceInfo(params, out, "a single parameter: nothing to compare")
    if len(params) > 12:  # direct mode: one parameter per layer; keep the 12 most important
        total = {p: sum(out[m].get(p, 0.0) for m in out) for p in params}
        params = sorted(params, key=lambda p: -total[p])[:12]
    return ImportanceInfo(params, out, note)
