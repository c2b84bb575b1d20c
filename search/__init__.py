"""fqopt.search: Optuna multi-objective search over allocation plans (docs/design.md §4.6).

``run(run, tables, n_trials=..., storage=..., study_name=...) -> optuna.Study`` runs, resumes or
joins a study whose trials are ``(avg_acc, worst_acc, avg_bits)`` on the search split;
``run_pipeline(run_dir)`` is ``fqopt search``: train if needed, profile, search, re-evaluate the
Pareto plans on the test split, refine, report, and returns its :class:`SearchResults` (the
typed form of ``reports/search_test.json``). ``write_report`` is ``fqopt report``; the
``*_info`` functions compute the figures' data and the ``plot_*`` functions draw them.

Importing the package is light (PEP 562, as ``import fqopt``): the constants of
``_defaults`` are there at once, every other name loads its module (torch, Optuna) on first use.
"""

from __future__ import annotations

import importlib

from fqopt.search._defaults import DEFAULT_BUDGET, DEFAULT_TRIALS

# public name -> private module that defines it; resolved on first access
_LAZY = {
    "run": "_study", "load_study": "_study", "pareto_trials": "_study",
    "make_sampler": "_study", "register_sampler": "_study", "SAMPLERS": "_study",
    "run_pipeline": "_pipeline", "PipelineResult": "_pipeline",
    "PipelineConfig": "_config", "TrainOptions": "_config", "REFINE_MODES": "_config",
    "precheck": "_pipeline",
    "write_report": "_report", "open_search": "_report", "pareto_rows": "_report",
    "ParetoRow": "_report", "mark_recommended": "_report",
    "SearchResults": "_results", "PlanRecord": "_results", "RefinedRecord": "_results",
    "SplitFigures": "_results", "Summary": "_results", "RecordBrief": "_results",
    "RefinedVerdict": "_results", "BudgetMark": "_results", "Comparison": "_results",
    "Difference": "_results", "AcceptanceCheck": "_results", "StudyInfo": "_results",
    "BriefFigures": "_results", "RESULTS_FILE": "_results",
    "RunInfo": "_results", "load_results": "_results",
    "recommend": "_verdict", "best_baseline": "_verdict", "summarize": "_verdict",
    "describe": "_verdict", "interval_text": "_verdict", "Predictions": "_verdict",
    "SearchSpace": "_space", "DirectSpace": "_space", "parse_budget_range": "_space",
    "SeedTrial": "_seeds", "default_seeds": "_seeds",
    "PlanMaker": "_plans", "build_plan": "_plans", "register_builder": "_plans",
    "BUILDERS": "_plans",
    "SplitEvaluator": "_trial", "WeightBank": "_trial", "TrialObjective": "_trial",
    "METRIC_NAMES": "_storage", "DIRECTIONS": "_storage", "default_storage_url": "_storage",
    "quiet_optuna": "_storage",
    "pareto_front_info": "_visualization", "chosen_plans": "_visualization",
    "group_accuracy_info": "_visualization", "layer_bits_info": "_visualization",
    "history_info": "_visualization", "importance_info": "_visualization",
    "plot_pareto_front": "_plots", "plot_group_accuracy": "_plots",
    "plot_layer_bits": "_plots", "plot_channel_heatmap": "_plots",
    "plot_history": "_plots", "plot_importance": "_plots",
    "ChosenPlan": "_visualization",
}

__all__ = ["DEFAULT_TRIALS", "DEFAULT_BUDGET", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"fqopt.search.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fqopt.search' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
