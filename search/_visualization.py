"""Figures of a search: backend-neutral info objects, and matplotlib renderers that only draw.

Each ``*_info`` function computes plain data (tested); each ``plot_*`` takes that info object and
returns a matplotlib ``Figure`` (Agg backend; matplotlib is imported only here, inside the
functions). Inputs are the :class:`SearchResults` of ``reports/search_test.json`` and the
Optuna study.
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

#: the kinds of baseline points, their legend names and marker styles
BASELINE_STYLE = {
    "uniform": ("uniform (stem, head 8-bit)", "s", "#7f7f7f"),
    "uniform-all": ("uniform, all layers", "s", "#c7c7c7"),
    "fairquant": ("FairQuant static", "^", "#d62728"),
    "hawq": ("HAWQ-style (mean)", "v", "#9467bd"),
    "ladder": ("fqopt solver (worst)", "D", "#2ca02c"),
}
PARETO_COLOR = "#1f77b4"
REFINED_COLOR = "#ff7f0e"
FP_COLOR = "#000000"


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
        if cap is None or t.values[2] <= cap + 1e-9:
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


# =========================================================================== renderers
def _mpl():
    # deferred: matplotlib (about a second) loads only when a figure is drawn
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


#: baselines' error bars sit a little beside their points, so that bars at one bit-width
#: (uniform, FairQuant, HAWQ at 4 bits) do not cover each other
_BAR_SHIFT = {"uniform": -0.06, "uniform-all": -0.03, "fairquant": 0.03, "hawq": 0.06,
              "ladder": 0.0}


def _errorbars(ax, pts, metric, color, zorder, *, shift=0.0, alpha=0.55):
    pts = [p for p in pts if p.ci and metric in p.ci]
    if not pts:
        return
    y = np.array([getattr(p, metric) for p in pts])
    lo = np.array([p.ci[metric][0] for p in pts])
    hi = np.array([p.ci[metric][1] for p in pts])
    ax.errorbar([p.avg_bits + shift for p in pts], y,
                yerr=[np.maximum(0, y - lo), np.maximum(0, hi - y)], fmt="none", ecolor=color,
                elinewidth=0.8, capsize=2, alpha=alpha, zorder=zorder)


def plot_pareto_front(info: ParetoFrontInfo):
    """Two panels: avg_acc and worst_acc against avg_bits, with 95 % bootstrap intervals as
    error bars where known, the recommended plan at each budget ringed, and the y axis on the
    region where plans compete (collapsed plans listed in a box)."""
    plt = _mpl()
    fig, axes = plt.subplots(1, 2, figsize=(13.0, 5.6), sharex=True)
    for ax, metric, title in ((axes[0], "avg_acc", "mean of group accuracies (avg_acc)"),
                              (axes[1], "worst_acc", "worst-group accuracy (worst_acc)")):
        if info.trials:
            ax.scatter([p.avg_bits for p in info.trials], [getattr(p, metric) for p in info.trials],
                       s=14, color="#bbbbbb", alpha=0.6, label="all trials", zorder=1)
        if info.pareto:
            xs = [p.avg_bits for p in info.pareto]
            ys = [getattr(p, metric) for p in info.pareto]
            # the front has three objectives, so its projection is not monotone: draw the
            # plans as points and the best value reached at ≤ x bits as a staircase
            sx, sy = staircase(xs, ys)
            ax.step(sx, sy, where="post", color=PARETO_COLOR, lw=1.2, alpha=0.8,
                    label="best Pareto plan at ≤ bits", zorder=3)
            _errorbars(ax, info.pareto, metric, PARETO_COLOR, 2)
            ax.scatter(xs, ys, s=22, color=PARETO_COLOR, label="Pareto plans", zorder=6)
        for kind, pts in info.baselines.items():
            name, marker, color = BASELINE_STYLE[kind]
            hollow = kind == "uniform-all"
            _errorbars(ax, pts, metric, color, 2, shift=_BAR_SHIFT.get(kind, 0.0), alpha=0.3)
            ax.scatter([p.avg_bits for p in pts], [getattr(p, metric) for p in pts],
                       marker=marker, s=48, facecolors="none" if hollow else color,
                       edgecolors=color if hollow else "white", linewidth=1.2 if hollow else 0.6,
                       label=name, zorder=4)
            if kind in ("uniform", "uniform-all"):
                for p in pts:
                    ax.annotate(f"{p.avg_bits:.0f}b", (p.avg_bits, getattr(p, metric)),
                                textcoords="offset points", xytext=(4, 4 if hollow else -11),
                                fontsize=7, color="#555555")
        if info.refined:
            _errorbars(ax, info.refined, metric, REFINED_COLOR, 2)
            ax.scatter([p.avg_bits for p in info.refined],
                       [getattr(p, metric) for p in info.refined], marker="*", s=140,
                       color=REFINED_COLOR, edgecolor="black", linewidth=0.5,
                       label="refined (fine-tuned or BAQ)", zorder=5)
        for i, r in enumerate(info.recommended):
            y = getattr(r.point, metric)
            ax.scatter([r.point.avg_bits], [y], s=190, facecolors="none", edgecolors="#2ca02c",
                       linewidth=2.0, zorder=7, label="recommended at ≤ budget" if i == 0 else None)
            ax.annotate(r.label, (r.point.avg_bits, y), textcoords="offset points",
                        xytext=(-6, 9 + 8 * (i % 2)), ha="center", fontsize=8, color="#1b7a1b",
                        fontweight="bold", zorder=8)
        if info.fp32:
            ax.axhline(info.fp32[metric], color=FP_COLOR, ls="--", lw=1.0, label="FP32",
                       zorder=2)
            # between 6 and 8 bits, where few plans lie
            ax.annotate(f"FP32 {info.fp32[metric]:.3f}", (0.8, info.fp32[metric]),
                        xycoords=("axes fraction", "data"), textcoords="offset points",
                        xytext=(0, 3), ha="center", fontsize=8)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("average bits per weight (parameter-weighted)")
        ax.set_ylabel(f"{metric} ({info.split} split)")
        ax.grid(True, alpha=0.3)
        _zoom(ax, info, metric)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=9,
               frameon=False)
    bars = any(p.ci for p in info.pareto)
    fig.suptitle(f"Pareto front on the {info.split} split"
                 + (" (plans chosen on the search split)" if info.split == "test" else "")
                 + ("; bars: 95 % bootstrap intervals" if bars else ""), fontsize=12)
    rows = math.ceil(len(labels) / 4)
    fig.tight_layout(rect=(0, 0.03 + 0.045 * rows, 1, 0.97))
    return fig


def staircase(xs, ys) -> tuple[list[float], list[float]]:
    """Points of the running maximum of ``ys`` over increasing ``xs`` (where it rises)."""
    out_x, out_y, best = [], [], -math.inf
    for x, y in sorted(zip(xs, ys)):
        if y > best:
            best = y
            out_x.append(x)
            out_y.append(y)
    if out_x:
        out_x.append(max(xs))
        out_y.append(best)
    return out_x, out_y


def _zoom(ax, info: ParetoFrontInfo, metric: str) -> None:
    """The y range of the info object; plans below it are listed in a box in the corner."""
    if metric in info.ylim:
        ax.set_ylim(*info.ylim[metric])
    below = info.collapsed.get(metric) or []
    if below:
        lines = [f"{p.label[:34]} ({p.avg_bits:.2f} b): {getattr(p, metric):.3f}"
                 for p in below[:6]]
        if len(below) > 6:
            lines.append(f"… and {len(below) - 6} more")
        ax.text(0.98, 0.03, "below the axis:\n" + "\n".join(lines), transform=ax.transAxes,
                ha="right", va="bottom", fontsize=7, color="#444444", zorder=9,
                bbox=dict(boxstyle="round,pad=0.35", fc="white", ec="#bbbbbb", alpha=0.92))


def plot_group_accuracy(info: GroupAccuracyInfo):
    plt = _mpl()
    G, S = len(info.groups), len(info.series)
    fig, ax = plt.subplots(figsize=(max(10.0, 1.3 * G + 6), 4.6))
    width = 0.8 / max(S, 1)
    cmap = plt.get_cmap("tab10")
    x = np.arange(G)
    for i, (label, accs) in enumerate(info.series):
        color = FP_COLOR if label == "FP32" else cmap(i % 10)
        xs = x - 0.4 + width * (i + 0.5)
        ax.bar(xs, accs, width, label=label, color=color,
               alpha=0.85 if label != "FP32" else 0.55)
        ci = info.intervals[i] if i < len(info.intervals) else []
        have = [k for k, c in enumerate(ci) if c is not None and not math.isnan(accs[k])]
        if have:
            y = np.array([accs[k] for k in have])
            lo = np.array([ci[k][0] for k in have])
            hi = np.array([ci[k][1] for k in have])
            ax.errorbar(xs[have], y, yerr=[np.maximum(0, y - lo), np.maximum(0, hi - y)],
                        fmt="none", ecolor="#333333", elinewidth=0.8, capsize=2)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{g}\n(n={info.n.get(g, '?')})" for g in info.groups])
    ax.set_ylabel(f"accuracy ({info.split} split)")
    ax.set_xlabel("group")
    vals = [v for _, accs in info.series for v in accs if not math.isnan(v)]
    vals += [c[k] for ci in info.intervals for c in ci if c is not None for k in (0, 1)]
    if vals:
        ax.set_ylim(max(0.0, min(vals) - 0.05), min(1.0, max(vals) + 0.03))
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    bars = any(c is not None for ci in info.intervals for c in ci)
    ax.set_title(f"Per-group accuracy of chosen plans ({info.split} split)"
                 + ("; bars: 95 % bootstrap intervals" if bars else ""))
    fig.tight_layout()
    return fig


def plot_layer_bits(info: LayerBitsInfo):
    plt = _mpl()
    L, S = len(info.layers), max(1, len(info.series))
    fig, ax = plt.subplots(figsize=(max(9.0, 0.55 * L + 3), 4.8))
    x = np.arange(L)
    width = 0.8 / S
    cmap = plt.get_cmap("tab10")
    for i, (label, means) in enumerate(info.series):
        ax.bar(x - 0.4 + width * (i + 0.5), means, width, label=label, color=cmap(i % 10))
    ax.set_xticks(x)
    ax.set_xticklabels([f"{n} ({_count(p)})" for n, p in zip(info.layers, info.params)],
                       rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("mean bits per weight in the layer")
    ax.set_yticks(info.bits or [2, 3, 4, 6, 8])
    ax.set_ylim(0, max(info.bits or [8]) + 0.5)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=min(3, S),
              frameon=False)
    ax.set_title("Bits per layer of chosen plans (weights per layer in brackets)", pad=28)
    fig.tight_layout()
    return fig


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)


def plot_channel_heatmap(info: LayerBitsInfo):
    plt = _mpl()
    from matplotlib.colors import BoundaryNorm, ListedColormap  # deferred as in _mpl

    heat = info.heatmap
    bits = info.bits or sorted({int(v) for v in np.unique(heat[~np.isnan(heat)])})
    colors = plt.get_cmap("viridis")(np.linspace(0.05, 0.95, len(bits)))
    cmap = ListedColormap(colors).with_extremes(bad="#f2f2f2")
    edges = [bits[0] - 0.5] + [(a + b) / 2 for a, b in zip(bits, bits[1:])] + [bits[-1] + 0.5]
    norm = BoundaryNorm(edges, cmap.N)
    L, C = heat.shape
    fig, ax = plt.subplots(figsize=(min(14.0, 4 + 0.06 * C), max(4.0, 0.22 * L + 1.5)))
    im = ax.imshow(np.ma.masked_invalid(heat), aspect="auto", cmap=cmap, norm=norm,
                   interpolation="nearest")
    ax.set_yticks(np.arange(L))
    ax.set_yticklabels(info.layers, fontsize=7)
    ax.set_xlabel("output channel")
    ax.set_title(f"Bits per output channel: {info.heatmap_label}")
    cb = fig.colorbar(im, ax=ax, ticks=bits, fraction=0.03, pad=0.02)
    cb.set_label("bits")
    fig.tight_layout()
    return fig


def plot_history(info: HistoryInfo):
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(9.0, 4.4))
    nums = np.asarray(info.numbers)
    vals = np.asarray(info.values)
    bits = np.asarray(info.bits)
    seeded = np.asarray(info.seeded, dtype=bool)
    if len(nums):
        kw = dict(cmap="viridis", vmin=2.0, vmax=8.0)
        sc = ax.scatter(nums[seeded], vals[seeded], c=bits[seeded], s=30, marker="s",
                        edgecolor="black", linewidth=0.4, label="seed trials", **kw)
        if (~seeded).any():
            sc = ax.scatter(nums[~seeded], vals[~seeded], c=bits[~seeded], s=24,
                            label="sampled trials", **kw)
        cb = fig.colorbar(sc, ax=ax, fraction=0.04, pad=0.02)
        cb.set_label("average bits")
        cap = "" if info.cap is None else f" at ≤ {info.cap:g} bits"
        ax.step(nums, info.best, where="post", color="#d62728", lw=1.5,
                label=f"best so far{cap}")
        low = np.percentile(vals, 10) if len(vals) > 5 else vals.min()
        ax.set_ylim(max(0.0, low - 0.05), min(1.0, vals.max() + 0.03))
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"{info.target} (search split)")
    ax.set_title(f"Optimisation history: {info.target}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_importance(info: ImportanceInfo):
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(8.0, max(3.0, 0.45 * len(info.params) + 1.6)))
    if info.message and not info.params:
        ax.text(0.5, 0.5, info.message, ha="center", va="center", fontsize=11)
        ax.set_axis_off()
        return fig
    metrics = list(info.importances)
    y = np.arange(len(info.params))
    h = 0.8 / max(1, len(metrics))
    cmap = plt.get_cmap("tab10")
    for i, m in enumerate(metrics):
        vals = [info.importances[m].get(p, 0.0) for p in info.params]
        ax.barh(y - 0.4 + h * (i + 0.5), vals, h, label=m, color=cmap(i))
    ax.set_yticks(y)
    ax.set_yticklabels(info.params)
    ax.invert_yaxis()
    ax.set_xlabel("importance (fANOVA, normalised per objective)")
    ax.set_title("Parameter importances (sampled trials; seed trials left out)"
                 + (f"\n{info.message}" if info.message else ""), fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
