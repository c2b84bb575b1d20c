"""What ``fqopt search``, ``show`` and ``report`` share: the options naming a shared study,
opening a run's search, the Pareto table and the search's closing summary (stderr), from the
typed records of ``fqopt.search``."""

from __future__ import annotations

import click

from fqopt import search  # light: its names load torch and Optuna on first use
from fqopt.cli import _ui
from fqopt.runs import Run

MARK = "★"


def study_options(fn):
    """``--storage`` and ``--study`` of a command that reads a run's search."""
    fn = click.option("--study", "study_name", default=None, help="Study name.")(fn)
    return click.option("--storage", default=None,
                        help="Optuna storage URL of a shared study [default: "
                             "sqlite:///RUN/study.db].")(fn)


def open_search(run_dir, storage, study_name):
    """``(run, study or None, results or None)`` of the run folder's search (Optuna quiet)."""
    search.quiet_optuna()
    run = Run.open(run_dir)
    study, results = search.open_search(run, storage=storage, study_name=study_name)
    return run, study, results


def print_pareto(rows: list, title: str | None = None, recommended=None,
                 budget: float | None = None) -> None:
    """A compact table of ``fqopt.search.pareto_rows`` (fits 80 columns): accuracies to 3
    decimals, the configuration last; ``recommended`` (a trial number) is marked with a star."""
    def f3(v):
        return "-" if v is None else f"{v:.3f}"

    cols = ["#", "trial", "bits", "S avg", "S worst", "T avg", "T worst", "configuration"]
    table = []
    for r in rows:
        star = recommended is not None and r.trial == recommended
        idx = "-" if r.index is None else f"{r.index:02d}"
        table.append([f"{MARK}{idx}" if star else idx, r.trial, f"{r.avg_bits:.2f}",
                      f3(r.search_avg_acc), f3(r.search_worst_acc), f3(r.test_avg_acc),
                      f3(r.test_worst_acc), r.label or ""])
    _ui.print_table(title, cols, table)
    _ui.info("S: search split (chose the plans), T: test split; avg = avg_acc (mean of group "
             "accuracies), worst = worst_acc; bits = average bits per weight")
    rec = next((r for r in rows if recommended is not None and r.trial == recommended), None)
    if rec is not None:
        at = "" if budget is None else f" at ≤ {budget:g} bits"
        where = f": {rec.plan_file}" if rec.plan_file else ""
        _ui.info(f"{MARK} recommended{at} (best search worst_acc){where}")
    files = [r.plan_file for r in rows if r.plan_file]
    if files:
        folder = files[0].rsplit("/", 1)[0]
        _ui.info(f"plan files in {folder}/: pareto-NN-<bits>b-<configuration>-<quantizer>.json "
                 "(NN = #)")


def _kb(n) -> str:
    return "–" if n is None else f"{n / 1024:.1f} KiB"


def print_summary(res, report_path=None) -> None:
    """The end of a search (``res``: its ``SearchResults``): which plan to use and how sure that
    is, in a few lines (stderr)."""
    describe, interval_text = search.describe, search.interval_text
    s = res.summary
    info = _ui.info
    budget = s.budget if s is not None else search.DEFAULT_BUDGET
    info(f"[bold]── summary ──[/] (95 % bootstrap intervals over the test images; a difference "
         "whose interval contains 0 is a tie)")
    fp = res.fp32.get("test")
    if fp:
        info(f"FP32: test worst_acc {interval_text(fp, 'worst_acc')}, avg_acc "
             f"{interval_text(fp, 'avg_acc')}")
    rec = None if s is None else s.recommended
    if rec is None:
        info(f"[red]No Pareto plan at ≤ {budget:g} average bits[/]: raise --budget or widen "
             "--budget-range")
    else:
        name = (rec.plan_file or "").rsplit("/", 1)[-1] or f"trial {rec.trial}"
        info(f"[bold green]Recommended at ≤ {budget:g} bits:[/] {name} — {rec.label}, "
             f"{rec.avg_bits:.2f} bits, {_kb(rec.size_bytes)} "
             f"(best search worst_acc {rec.search.worst_acc:.3f} within the budget)")
        if rec.test:
            info(f"  test: worst_acc {interval_text(rec.test, 'worst_acc')} "
                 f"({rec.test.worst_group}), avg_acc {interval_text(rec.test, 'avg_acc')}")
        base = s.best_baseline
        if base is not None:
            info(f"  best baseline at ≤ {budget:g} bits (strongest test worst_acc of uniform, "
                 f"FairQuant, HAWQ-style, MCT): {base.label} ({base.avg_bits:.2f} "
                 f"bits), test worst_acc {interval_text(base.test, 'worst_acc')}, avg_acc "
                 f"{interval_text(base.test, 'avg_acc')}")
            cmp = s.comparison
            how = "paired" if cmp and cmp.paired else "unpaired"
            info(f"  recommended − baseline ({how}): worst_acc {describe(cmp, 'worst_acc')}; "
                 f"avg_acc {describe(cmp, 'avg_acc')}")
        if s.export_command:
            info(f"  export it: {s.export_command}")
    for r in (s.refined if s is not None else []):
        src = (r.source_file or "").rsplit("/", 1)[-1]
        sw = r.search_worst_acc or {}
        chosen = "search worst_acc {:.3f} vs {:.3f}".format(
            sw.get("refined") or float("nan"), sw.get("static") or float("nan"))
        word = (f"deploy the refined model: its plan with its checkpoint ({chosen})"
                if r.use_refined else
                f"keep {src}, it needs no refined checkpoint ({chosen})")
        info(f"Refined ({r.label}, {r.avg_bits:.2f} bits): test worst_acc "
             f"{interval_text(r.test, 'worst_acc')} against "
             f"{interval_text(r.source_test, 'worst_acc')} before; "
             f"{describe(r.comparison, 'worst_acc')} — {word}")
        if r.export_command:
            info(f"  export it: {r.export_command}")
    st = res.study
    info(f"Study {st.name} in {st.storage} ({st.states.get('complete', 0)} complete trials); "
         "open it with:")
    info(f"  {st.dashboard}")
    if report_path is not None:
        info(f"Report: {report_path}")
    info(f"Results: {res.run.path}/reports/search_test.json; "
         "plans in its plans/ folder (`fqopt show` lists them)")
