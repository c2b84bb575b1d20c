"""fqopt show: the Pareto plans of a run's search, the recommended one marked."""

from __future__ import annotations

import click

from fqopt import search  # light: its names load torch and Optuna on first use
from fqopt.cli import _ui
from fqopt.cli._render import open_search, print_pareto, study_options


@click.command("show", help="List the Pareto plans of a run's search; ★ marks the plan "
                            "recommended at the budget (best search worst_acc within it).")
@_ui.run_option()
@study_options
@click.option("--budget", type=click.FloatRange(2.0, 8.0), default=None,
              help="Average bits to recommend a plan at [default: the search's --budget].")
@_ui.format_option
def command(run_dir, storage, study_name, budget, fmt):
    run, study, results = open_search(run_dir, storage, study_name)
    rows = search.pareto_rows(run, study, results)
    if budget is None:
        summary = None if results is None else results.summary
        budget = search.DEFAULT_BUDGET if summary is None else summary.budget
    # the same rule as the search's summary, over the rows shown (search figures only)
    best = search.mark_recommended(rows, budget)
    recommended = None if best is None else best.trial
    if fmt == "json":
        _ui.print_json({"study": study.study_name if study is not None else
                        results.study.name, "budget": budget,
                        "recommended": recommended, "pareto": [r.to_dict() for r in rows]})
        return
    name = study.study_name if study is not None else results.study.name
    n = len(study.trials) if study is not None else None
    print_pareto(rows, title=f"Pareto plans of {name}" + (f" ({n} trials)" if n else ""),
                 recommended=recommended, budget=budget)
    if best is None:
        _ui.info(f"no Pareto plan at ≤ {budget:g} average bits; try a larger --budget")
    if not any(r.test_avg_acc is not None for r in rows):
        _ui.info("no test figures yet: `fqopt search` re-evaluates the Pareto plans on the test "
                 "split when the study is complete")
