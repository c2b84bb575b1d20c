"""Matplotlib renderers of the figures' info objects (``_visualization``): each ``plot_*`` takes
an info object and returns a ``Figure`` (Agg backend); they compute nothing the info objects do
not hold. matplotlib is imported inside :func:`_mpl` only, when a figure is drawn.
"""

from __future__ import annotations

import math

import numpy as np

from fqopt.search._visualization import (BASELINE_STYLE, GroupAccuracyInfo, HistoryInfo,
                                         ImportanceInfo, LayerBitsInfo, ParetoFrontInfo)

PARETO_COLOR = "#1f77b4"
REFINED_COLOR = "#ff7f0e"
FP_COLOR = "#000000"


def _mpl():
    # deferred: matplotlib (about a second) loads only when a figure is drawn
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # deferred: after the backend is chosen

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
