"""fqopt show: the Pareto plans of a run's search."""

from __future__ import annotations

import click

from fqopt.cli import _ui


def print_pareto(rows: list[dict], title: str | None = None) -> None:
    """A compact table (fits 80 columns): accuracies to 3 decimals, the configuration last."""
    def f3(v):
        return "-" if v is None else f"{v:.3f}"

    cols = ["#", "trial", "bits", "S avg", "S worst", "T avg", "T worst", "configuration"]
    table = []
    for r in rows:
        config = r["label"] or ""
        table.append(["-" if r["index"] is None else f"{r['index']:02d}", r["trial"],
                      f"{r['avg_bits']:.2f}", f3(r["search_avg_acc"]), f3(r["search_worst_acc"]),
                      f3(r["test_avg_acc"]), f3(r["test_worst_acc"]), config])
    _ui.print_table(title, cols, table)
    _ui.info("S: search split (chose the plans), T: test split; avg = avg_acc (mean of group "
             "accuracies), worst = worst_acc; bits = average bits per weight")
    files = [r["plan_file"] for r in rows if r.get("plan_file")]
    if files:
        _ui.info(f"plan files: {files[0].rsplit('-', 1)[0]}-NN.json (NN = #)")


@click.command("show", help="List the Pareto plans of a run's search.")
@_ui.run_option()
@click.option("--storage", default=None,
              help="Optuna storage URL of a shared study [default: sqlite:///RUN/study.db].")
@click.option("--study", "study_name", default=None, help="Study name.")
@_ui.format_option
def command(run_dir, storage, study_name, fmt):
    from fqopt.cli.search import quiet_optuna
    from fqopt.runs import Run
    from fqopt.search._report import open_search, pareto_rows

    quiet_optuna()
    run = Run.open(run_dir)
    study, results = open_search(run, storage=storage, study_name=study_name)
    rows = pareto_rows(run, study, results)
    if fmt == "json":
        _ui.print_json({"study": study.study_name if study is not None else
                        (results or {}).get("study", {}).get("name"), "pareto": rows})
        return
    name = study.study_name if study is not None else results["study"]["name"]
    n = len(study.trials) if study is not None else None
    print_pareto(rows, title=f"Pareto plans of {name}" + (f" ({n} trials)" if n else ""))
    if not any(r["test_avg_acc"] is not None for r in rows):
        _ui.info("no test figures yet: `fqopt search` re-evaluates the Pareto plans on the test "
                 "split when the study is complete")
