"""fqopt show: the Pareto plans of a run's search, the recommended one marked."""

from __future__ import annotations

import click

from fqopt.cli import _ui

MARK = "★"


def print_pareto(rows: list[dict], title: str | None = None, recommended=None,
                 budget: float | None = None) -> None:
    """A compact table (fits 80 columns): accuracies to 3 decimals, the configuration last;
    ``recommended`` (a trial number) is marked with a star."""
    def f3(v):
        return "-" if v is None else f"{v:.3f}"

    cols = ["#", "trial", "bits", "S avg", "S worst", "T avg", "T worst", "configuration"]
    table = []
    for r in rows:
        config = r["label"] or ""
        star = recommended is not None and r["trial"] == recommended
        idx = "-" if r["index"] is None else f"{r['index']:02d}"
        table.append([f"{MARK}{idx}" if star else idx, r["trial"],
                      f"{r['avg_bits']:.2f}", f3(r["search_avg_acc"]), f3(r["search_worst_acc"]),
                      f3(r["test_avg_acc"]), f3(r["test_worst_acc"]), config])
    _ui.print_table(title, cols, table)
    _ui.info("S: search split (chose the plans), T: test split; avg = avg_acc (mean of group "
             "accuracies), worst = worst_acc; bits = average bits per weight")
    rec = next((r for r in rows if recommended is not None and r["trial"] == recommended), None)
    if rec is not None:
        at = "" if budget is None else f" at ≤ {budget:g} bits"
        where = f": {rec['plan_file']}" if rec.get("plan_file") else ""
        _ui.info(f"{MARK} recommended{at} (best search worst_acc){where}")
    files = [r["plan_file"] for r in rows if r.get("plan_file")]
    if files:
        folder = files[0].rsplit("/", 1)[0]
        _ui.info(f"plan files in {folder}/: pareto-NN-<bits>b-<configuration>-<quantizer>.json "
                 "(NN = #)")


@click.command("show", help="List the Pareto plans of a run's search; ★ marks the plan "
                            "recommended at the budget (best search worst_acc within it).")
@_ui.run_option()
@click.option("--storage", default=None,
              help="Optuna storage URL of a shared study [default: sqlite:///RUN/study.db].")
@click.option("--study", "study_name", default=None, help="Study name.")
@click.option("--budget", type=click.FloatRange(2.0, 8.0), default=None,
              help="Average bits to recommend a plan at [default: the search's --budget].")
@_ui.format_option
def command(run_dir, storage, study_name, budget, fmt):
    from fqopt.cli.search import quiet_optuna
    from fqopt.runs import Run
    from fqopt.search._report import open_search, pareto_rows
    from fqopt.search._verdict import DEFAULT_BUDGET, recommend

    quiet_optuna()
    run = Run.open(run_dir)
    study, results = open_search(run, storage=storage, study_name=study_name)
    rows = pareto_rows(run, study, results)
    if budget is None:
        budget = ((results or {}).get("summary") or {}).get("budget", DEFAULT_BUDGET)
    # the same rule as the search's summary, over the rows shown (search figures only)
    best = recommend({"pareto": [dict(r, search={"worst_acc": r["search_worst_acc"],
                                                 "avg_acc": r["search_avg_acc"]})
                                 for r in rows if r["search_worst_acc"] is not None]}, budget)
    recommended = None if best is None else best["trial"]
    for r in rows:
        r["recommended"] = r["trial"] == recommended
    if fmt == "json":
        _ui.print_json({"study": study.study_name if study is not None else
                        (results or {}).get("study", {}).get("name"), "budget": budget,
                        "recommended": recommended, "pareto": rows})
        return
    name = study.study_name if study is not None else results["study"]["name"]
    n = len(study.trials) if study is not None else None
    print_pareto(rows, title=f"Pareto plans of {name}" + (f" ({n} trials)" if n else ""),
                 recommended=recommended, budget=budget)
    if best is None:
        _ui.info(f"no Pareto plan at ≤ {budget:g} average bits; try a larger --budget")
    if not any(r["test_avg_acc"] is not None for r in rows):
        _ui.info("no test figures yet: `fqopt search` re-evaluates the Pareto plans on the test "
                 "split when the study is complete")
