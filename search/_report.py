"""``fqopt report``: PNG figures and one self-contained ``report.html`` for a run's search.

Inputs: the study (for all trials, the history and the importances) and the results of the
test-split re-evaluation (``reports/search_test.json``; without it the report shows the search
split only). The HTML embeds the PNGs (base64) and needs no network or other file.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from fqopt._io import check_writable, write_bytes, write_text
from fqopt.errors import UserError
from fqopt.plan import AllocationPlan
from fqopt.search import _plots as plots
from fqopt.search import _visualization as vis
from fqopt.search._results import (RESULTS_SCHEMA, PlanRecord, RunInfo, SearchResults,
                                   StudyInfo, _opt, _Record, load_results)
from fqopt.search._seeds import ATTR_SEED
from fqopt.search._study import complete_trials, load_study, pareto_trials
from fqopt.search._trial import ATTR_PLAN
from fqopt.search._verdict import best_within, describe, group_rates, interval_text

REPORT_FILE = "report.html"
FIGURES = ("pareto_test", "pareto_search", "group_accuracy", "layer_bits", "channel_bits",
           "history", "importance")


def results_from_study(run, study) -> SearchResults:
    """Results with search-split figures only (when the test split was not evaluated)."""
    pareto = [PlanRecord.from_trial(t, i) for i, t in enumerate(pareto_trials(study))]
    numbers = {r.trial for r in pareto}
    baselines = []
    for t in complete_trials(study):
        if t.user_attrs.get(ATTR_SEED):
            rec = PlanRecord.from_trial(t)
            rec.pareto = t.number in numbers
            baselines.append(rec)
    ds = run.dataset()
    return SearchResults(
        schema=RESULTS_SCHEMA, study=StudyInfo(name=study.study_name),
        run=RunInfo(path=str(run.path), model=run.model_name, dataset=run.config["dataset"],
                    groups=list(ds.group_names)),
        pareto=pareto, baselines=baselines,
        notes=["the test split has not been evaluated: run `fqopt search` to completion for "
               "test figures"])


def _load_plans(run, chosen: list[vis.ChosenPlan], study=None):
    out = []
    trials = {}
    if study is not None:
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for c in chosen:
        r = c.record
        if r.plan_file and (run.path / r.plan_file).is_file():
            plan = AllocationPlan.load(run.path / r.plan_file)
        elif r.trial in trials and ATTR_PLAN in trials[r.trial].user_attrs:
            plan = AllocationPlan.from_dict(trials[r.trial].user_attrs[ATTR_PLAN])
        else:
            continue
        out.append((f"pareto-{r.index:02d}: {r.label} ({r.avg_bits:.2f} b)", plan))
    return out


def build_figures(run, study, results: SearchResults) -> dict[str, object]:
    """Figure name -> matplotlib Figure (names from :data:`FIGURES`; some may be missing)."""
    figs = {}
    if results.has_test:
        figs["pareto_test"] = plots.plot_pareto_front(
            vis.pareto_front_info(results, split="test"))
    figs["pareto_search"] = plots.plot_pareto_front(
        vis.pareto_front_info(results, split="search", study=study))
    chosen = vis.chosen_plans(results)
    figs["group_accuracy"] = plots.plot_group_accuracy(
        vis.group_accuracy_info(results, split="test" if results.has_test else "search",
                                chosen=chosen))
    plans = _load_plans(run, chosen, study)
    if plans:
        # the heat map shows a mixed-precision plan: the one chosen at ≤ 4.5 bits, else the
        # nearest cap (a uniform plan would be one flat colour)
        order = sorted(range(len(chosen)), key=lambda i: abs(chosen[i].cap - 4.5))
        mixed = [i for i in order if chosen[i].record.kind != "uniform"]
        idx = (mixed or order or [0])[0]
        info = vis.layer_bits_info(plans, heatmap_index=min(idx, len(plans) - 1))
        figs["layer_bits"] = plots.plot_layer_bits(info)
        if plans[0][1].granularity == "channel":
            figs["channel_bits"] = plots.plot_channel_heatmap(info)
    if study is not None:
        figs["history"] = plots.plot_history(vis.history_info(study, target=1))
        figs["importance"] = plots.plot_importance(vis.importance_info(study))
    return figs


def write_report(run, study, results: SearchResults | None = None, *, force: bool = False,
                 callback=None, out_dir=None) -> Path:
    """Write the PNGs and ``report.html`` into ``out_dir`` (default ``RUN/reports``).

    Refuses to replace an existing ``report.html`` unless ``force``. Returns the HTML path.
    """
    out_dir = Path(out_dir or run.reports_dir)
    html_path = out_dir / REPORT_FILE
    check_writable(html_path, force, what="report")
    if results is None:
        results = load_results(run) or results_from_study(run, study)
    figs = build_figures(run, study, results)
    import matplotlib.pyplot as plt  # deferred: matplotlib loads only when a report is drawn

    pngs: dict[str, bytes] = {}
    total = len(figs) + 1
    for i, (name, fig) in enumerate(figs.items()):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        pngs[name] = buf.getvalue()
        write_bytes(out_dir / f"{name}.png", pngs[name])
        if callback is not None:
            callback("report", i + 1, total, figure=name)
    write_text(html_path, render_html(results, pngs, study))
    if callback is not None:
        callback("report", total, total)
    return html_path


# --------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ddd;padding:.25em .55em;text-align:right}
th{background:#f5f5f5}td.l,th.l{text-align:left}
.note{background:#f6f8fa;border-left:4px solid #1f77b4;padding:.6em 1em;margin:1em 0}
.ok{color:#2ca02c;font-weight:600}.bad{color:#d62728;font-weight:600}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
small{color:#666}
"""


def _fmt(v, digits=4):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _table(columns: list[str], rows: list[list], left: int = 1) -> str:
    head = "".join(f"<th class='l'>{html.escape(c)}</th>" if i < left else
                   f"<th>{html.escape(c)}</th>" for i, c in enumerate(columns))
    body = []
    for r in rows:
        cells = "".join(f"<td class='l'>{_fmt(v)}</td>" if i < left else f"<td>{_fmt(v)}</td>"
                        for i, v in enumerate(r))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(pngs: dict, name: str, alt: str) -> str:
    if name not in pngs:
        return ""
    data = base64.b64encode(pngs[name]).decode()
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _rep(rec, split: str, key: str):
    """One figure of a record on a split (None when that split was not evaluated)."""
    rep = rec.figures(split) if rec is not None else None
    return rep.get(key) if rep else None


def _kib(n):
    return None if n is None else f"{n / 1024:.1f}"


def _with_ci(v, ci) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if ci is None:
        return f"{v:.3f}"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _marks(results: SearchResults) -> dict:
    """Pareto index -> the budgets at which it is the recommended plan, as text (``3.5, 4``)."""
    out: dict[int, list[float]] = {}
    for m in (results.summary.by_budget if results.summary else []):
        if m.index is not None:
            out.setdefault(m.index, []).append(float(m.budget))
    return {k: ", ".join(f"{b:g}" for b in sorted(v)) for k, v in out.items()}


def _verdict_html(results: SearchResults) -> str:
    """The decision on top of the page: which plan to deploy, against the best baseline."""
    s = results.summary
    if not s:
        return ""
    budget = s.budget
    rec, base, cmp = s.recommended, s.best_baseline, s.comparison
    out = ["<h2>Verdict</h2>"]
    if rec is None:
        out.append(f"<p class='bad'>No Pareto plan at ≤ {budget:g} average bits.</p>")
        return "".join(out)
    name = (rec.plan_file or "").rsplit("/", 1)[-1]
    out.append(f"<p><b>Deploy this plan at ≤ {budget:g} average bits:</b> "
               f"<code>{html.escape(name)}</code> ({html.escape(str(rec.label))}, "
               f"{rec.avg_bits:.2f} bits, {_kib(rec.size_bytes)} KiB of weights), "
               f"chosen on the search split (worst_acc {rec.search.worst_acc:.3f}). On "
               f"the test split: worst_acc {interval_text(rec.test, 'worst_acc')}, "
               f"avg_acc {interval_text(rec.test, 'avg_acc')}.</p>")
    if base is not None:
        w = None if cmp is None else cmp.worst_acc
        result = None if w is None else w.verdict
        cls = {"better": "ok", "worse": "bad"}.get(result, "")
        how = ("paired bootstrap over the test images" if cmp and cmp.paired
               else "unpaired intervals")
        word = {"better": "better than", "worse": "worse than",
                "tie": "a tie with"}.get(result, "compared with")
        out.append(f"<p class='{cls}'>Against the best baseline at ≤ {budget:g} bits (the "
                   "strongest test worst_acc among uniform, FairQuant, HAWQ-style and Sony MCT "
                   "plans), "
                   f"{html.escape(base.label)} ({base.avg_bits:.2f} bits; test worst_acc "
                   f"{interval_text(base.test, 'worst_acc')}): {word} it. "
                   f"Recommended − baseline ({how}, 95 %): worst_acc "
                   f"{html.escape(describe(cmp, 'worst_acc'))}; avg_acc "
                   f"{html.escape(describe(cmp, 'avg_acc'))}.</p>")
    for r in s.refined:
        out.append(f"<p>{html.escape(str(r.label))} ({r.avg_bits or 0:.2f} bits): "
                   f"test worst_acc {interval_text(r.test, 'worst_acc')} against "
                   f"{interval_text(r.source_test, 'worst_acc')} before refinement: "
                   f"{html.escape(describe(r.comparison, 'worst_acc'))}"
                   + (" — deploy the refined model (fine-tuning is fqopt's default; the test "
                      "split never chooses)." if r.use_refined else
                      " — the search split prefers the static plan: deploy it.") + "</p>")
    if s.export_command:
        out.append(f"<p>Export: <code>{html.escape(s.export_command)}</code></p>")
    st = results.study
    if st.dashboard:
        out.append(f"<p>Study: <code>{html.escape(str(st.storage))}</code>; open it "
                   f"with <code>{html.escape(st.dashboard)}</code> (plans and reports are "
                   "stored whole as artifacts of each trial).</p>")
    return "".join(out)


def _rates_html(results: SearchResults) -> str:
    """Per-group sensitivity and specificity (one class against the rest) of the recommended
    plan at each budget, on the test split."""
    by_index = {r.index: r for r in results.pareto}
    marks = _marks(results)
    out = []
    for index, budget in sorted(marks.items(), key=lambda kv: float(kv[1].split(",")[0])):
        rec = by_index.get(index)
        rates = group_rates(rec.test) if rec is not None and rec.test else {}
        if not rates:
            continue
        classes = list(next(iter(rates.values())))
        rows = []
        for g, row in rates.items():
            cells = []
            for c in classes:
                sens, spec = row[c]
                cells.append(("–" if sens is None else f"{sens:.2f}") + " / "
                             + ("–" if spec is None else f"{spec:.2f}"))
            rows.append([g, *cells])
        out.append(f"<h3>Recommended at ≤ {budget} bits: pareto-{index:02d} "
                   f"({html.escape(str(rec.label))}, {rec.avg_bits:.2f} b)</h3>"
                   + _table(["group", *[f"{c}: sens / spec" for c in classes]], rows))
    if not out:
        return ""
    return ("<h2>Sensitivity and specificity per group</h2><p>Test split; for each class, "
            "sensitivity (true-positive rate) and specificity (true-negative rate) of that "
            "class against the others, per group.</p>" + "".join(out))


def render_html(results: SearchResults, pngs: dict[str, bytes], study=None) -> str:
    run, st = results.run, results.study
    ds = run.dataset or {}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>fqopt report: "
             f"{html.escape(str(run.model))}</title><style>{_CSS}</style></head><body>"]
    parts.append(f"<h1>fqopt search report</h1><small>{html.escape(str(run.path or ''))}"
                 f" · written {datetime.datetime.now():%Y-%m-%d %H:%M}</small>")
    fp = results.fp32
    info_rows = [
        ["model", run.model], ["dataset", ds.get("name") if isinstance(ds, dict) else ds],
        ["dataset options", ", ".join(f"{k}={v}" for k, v in (ds.get("options") or {}).items())
         if isinstance(ds, dict) else ""],
        ["image size", run.image_size], ["classes", run.num_classes],
        ["groups", ", ".join(run.groups)],
        ["split sizes", ", ".join(f"{k} {v}" for k, v in run.splits.items())],
        ["study", f"{st.name} ({st.storage or ''})"],
        ["trials", ", ".join(f"{k} {v}" for k, v in st.states.items() if v)],
        ["sampler", f"{st.sampler} (seed {st.seed})"],
        ["granularity", f"{st.granularity}" + (" (direct)" if st.direct else "")],
        ["sensitivity methods", ", ".join(st.methods)],
        ["budget range", "–".join(str(b) for b in st.budget_range) + " average bits"],
    ]
    parts.append(_table(["", ""], [r for r in info_rows if r[1] not in (None, "")]))
    parts.append("<div class='note'>The <b>search</b> split chose the plans (every trial was "
                 "evaluated on it); the <b>test</b> split, which the search never saw, reports "
                 "them. Accuracies are fractions; <code>avg_acc</code> is the mean of group "
                 "accuracies, <code>worst_acc</code> the lowest group accuracy; bits are averaged "
                 "over quantized weights (pinned stem and head at 8 bits included).</div>")
    parts.append(_verdict_html(results))
    check = results.check
    if check and check.best_plan and check.uniform_test_worst_acc is not None:
        b = check.best_plan
        cls = "ok" if check.passed else "bad"
        every = check.uniform_all_layers_test_worst_acc
        parts.append(
            f"<p class='{cls}'>README's check: best Pareto plan at ≤ {check.bits} average bits "
            f"(pareto-{b['index']:02d}, {b['avg_bits']:.2f} b): test worst_acc "
            f"{b['test_worst_acc']:.4f} vs uniform {check.uniform_bits}-bit "
            f"{check.uniform_test_worst_acc:.4f} (stem and head at 8 bits, "
            f"{check.uniform_avg_bits:.2f} b)"
            + ("" if every is None else f" and {every:.4f} (every layer at "
                                         f"{check.uniform_bits} bits, FairQuant's baseline)")
            + ".</p>")
    if fp:
        rows = [[s, interval_text(fp[s], "accuracy"), interval_text(fp[s], "avg_acc"),
                 interval_text(fp[s], "worst_acc"), fp[s].worst_group]
                for s in ("search", "test") if fp.get(s)]
        parts.append("<h2>FP32 baseline</h2>" + _table(
            ["split", "accuracy", "avg_acc", "worst_acc", "worst group"], rows))

    parts.append("<h2>Pareto front</h2>")
    parts.append(_img(pngs, "pareto_test", "Pareto front, test split"))
    parts.append(_img(pngs, "pareto_search", "Pareto front, search split"))
    rows = []
    marks = _marks(results)
    for r in results.pareto:
        mark = marks.get(r.index)
        name = f"pareto-{r.index:02d}" + (f" ★ ≤ {mark} b" if mark is not None else "")
        rows.append([name, r.trial, r.label, r.avg_bits, _kib(r.size_bytes),
                     _rep(r, "search", "avg_acc"), _rep(r, "search", "worst_acc"),
                     interval_text(r.test, "avg_acc"),
                     interval_text(r.test, "worst_acc"), _rep(r, "test", "worst_group"),
                     (r.plan_file or "").rsplit("/", 1)[-1]])
    parts.append("<p>★ marks the plan recommended at each budget (the best <i>search</i> "
                 "worst_acc at or below it). Test figures with 95 % bootstrap intervals "
                 "(images resampled within each group).</p>")
    parts.append(_table(["plan", "trial", "configuration", "avg bits", "weights (KiB)",
                         "search avg_acc", "search worst_acc", "test avg_acc [95 %]",
                         "test worst_acc [95 %]", "test worst group", "file (plans/)"], rows,
                        left=3))

    parts.append("<h2>Baselines</h2>")
    rows = [[b.label, "beside" if b.trial is None else b.trial, b.avg_bits,
             _kib(b.size_bytes), _rep(b, "search", "avg_acc"),
             _rep(b, "search", "worst_acc"), interval_text(b.test, "avg_acc"),
             interval_text(b.test, "worst_acc"), "yes" if b.pareto else ""]
            for b in sorted(results.baselines, key=lambda b: (b.kind, b.avg_bits))]
    parts.append("<p>Trial “beside”: evaluated beside the study (FairQuant's every-layer "
                 "uniform plans, and uniform plans outside the sampled budget range).</p>")
    parts.append(_table(["baseline", "trial", "avg bits", "weights (KiB)", "search avg_acc",
                         "search worst_acc", "test avg_acc [95 %]", "test worst_acc [95 %]",
                         "on the front"], rows))
    if results.refined:
        summ = {r.plan_file: r for r in (results.summary.refined if results.summary else [])}
        rows = []
        for r in results.refined:
            verdict = summ.get(r.plan_file)
            cmp = None if verdict is None else verdict.comparison
            rows.append([r.label, r.avg_bits, _kib(r.size_bytes),
                         interval_text(r.test, "avg_acc"), interval_text(r.test, "worst_acc"),
                         describe(cmp, "worst_acc"), (r.plan_file or "").rsplit("/", 1)[-1]])
        parts.append("<h2>Refined plans (fine-tuned or BAQ)</h2>" + _table(
            ["plan", "avg bits", "weights (KiB)", "test avg_acc [95 %]", "test worst_acc [95 %]",
             "worst_acc − its source (paired)", "file (plans/)"], rows))

    parts.append("<h2>Per-group accuracy</h2>")
    parts.append("<p>Chosen plans: for each cap on average bits (3, 3.5, 4, 4.5, 5.5), the Pareto "
                 "plan with the best <i>search</i> worst_acc within it.</p>")
    parts.append(_img(pngs, "group_accuracy", "per-group accuracy"))
    ginfo = vis.group_accuracy_info(results, split="test" if results.has_test else "search",
                                    chosen=vis.chosen_plans(results))
    rows = []
    for i, (label, accs) in enumerate(ginfo.series):
        ci = ginfo.intervals[i] if i < len(ginfo.intervals) else [None] * len(accs)
        rows.append([label, *[_with_ci(a, c) for a, c in zip(accs, ci)]])
    parts.append(_table(["plan", *[f"{g} (n={ginfo.n.get(g, '?')})" for g in ginfo.groups]],
                        rows))
    parts.append(_rates_html(results))
    parts.append("<h2>Bits per layer and per channel</h2>")
    parts.append(_img(pngs, "layer_bits", "bits per layer"))
    parts.append(_img(pngs, "channel_bits", "bits per channel"))
    parts.append("<h2>Optuna</h2>")
    parts.append(_img(pngs, "history", "optimisation history"))
    parts.append(_img(pngs, "importance", "parameter importances"))
    stages = results.stages or {}
    if stages:
        parts.append("<h2>Run time</h2>" + _table(
            ["stage", "seconds"], [[k, float(v)] for k, v in stages.items()]))
    if results.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>"
                                                    for n in results.notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def open_search(run, *, storage: str | None = None, study_name: str | None = None
                ) -> tuple[object, SearchResults | None]:
    """``(study or None, results or None)`` of a run's search, for ``show`` and ``report``.

    The study comes from ``storage`` (default: the run's ``study.db``); without an explicit
    storage and with no ``study.db``, only the results file is used (a study on a shared server
    needs ``--storage`` and ``--study``). Neither present is a UserError.
    """
    results = load_results(run)
    study = None
    if storage is not None or study_name is not None or run.study_path.is_file():
        study = load_study(run, storage=storage, study_name=study_name)
    if study is None and results is None:
        raise UserError(f"run {run.path} has no search yet (no {run.study_path.name} and no "
                        f"reports/search_test.json); run `fqopt search --run {run.path}` first, "
                        "or name a shared study with --storage and --study")
    return study, results


@dataclass
class ParetoRow(_Record):
    """One line of ``fqopt show`` and of the search's closing table (``to_dict``: its JSON)."""

    index: int | None
    trial: int | None
    label: str | None
    kind: str | None
    avg_bits: float
    size_bytes: int | None
    search_avg_acc: float | None
    search_worst_acc: float | None
    test_avg_acc: float | None
    test_worst_acc: float | None
    method: str | None
    lam: float | None = field(metadata={"key": "lambda"})
    quantizer: str | None = None
    plan_file: str | None = None
    #: set by :func:`mark_recommended`
    recommended: bool | None = field(default=None, metadata=_opt())


def pareto_rows(run, study=None, results: SearchResults | None = None) -> list[ParetoRow]:
    """The Pareto plans, one row each: the study's current front when the study is at hand,
    with the test figures of the last re-evaluation attached by trial number."""
    known = [] if results is None else results.pareto
    by_trial = {r.trial: r for r in known}
    records = results_from_study(run, study).pareto if study is not None else list(known)
    rows = []
    for r in records:
        old = by_trial.get(r.trial)
        rows.append(ParetoRow(
            index=r.index, trial=r.trial, label=r.label, kind=r.kind, avg_bits=r.avg_bits,
            size_bytes=r.size_bytes,
            search_avg_acc=_rep(r, "search", "avg_acc"),
            search_worst_acc=_rep(r, "search", "worst_acc"),
            test_avg_acc=_rep(old, "test", "avg_acc"),
            test_worst_acc=_rep(old, "test", "worst_acc"),
            # a baseline's parameters only place it in the space; show what it really used
            method=None if r.kind == "uniform" else r.params.get("method"),
            lam=r.params.get("lambda") if r.kind in ("sampled", "ladder") else None,
            quantizer=r.params.get("quantizer"), plan_file=None if old is None else old.plan_file))
    return rows


def mark_recommended(rows: list[ParetoRow], budget: float) -> ParetoRow | None:
    """The row recommended at ≤ ``budget`` average bits by the summary's rule (best search
    worst_acc, then avg_acc, then fewer bits), over the rows shown; sets every row's
    ``recommended``."""
    best = best_within(rows, budget, lambda r: None if r.search_worst_acc is None else
                       (r.search_worst_acc, r.search_avg_acc))
    for r in rows:
        r.recommended = best is not None and r.trial == best.trial
    return best
