"""fqopt.search: Optuna multi-objective search over allocation plans (docs/design.md §4.6).

``run(run, tables, n_trials=..., storage=..., study_name=...) -> optuna.Study`` runs, resumes or
joins a study whose trials are ``(avg_acc, worst_acc, avg_bits)`` on the search split;
``run_pipeline(run_dir)`` is ``fqopt search``: train if needed, profile, search, re-evaluate the
Pareto plans on the test split, refine, report. ``write_report`` is ``fqopt report``; the
``*_info`` functions compute the figures' data and the ``plot_*`` functions draw them.
"""

from fqopt.search._config import REFINE_MODES, PipelineConfig, TrainOptions
from fqopt.search._pipeline import PipelineResult, run_pipeline
from fqopt.search._plans import BUILDERS, PlanMaker, build_plan, register_builder
from fqopt.search._report import load_results, write_report
from fqopt.search._seeds import SeedTrial, default_seeds
from fqopt.search._space import DirectSpace, SearchSpace
from fqopt.search._storage import DIRECTIONS, METRIC_NAMES, default_storage_url
from fqopt.search._study import (SAMPLERS, load_study, make_sampler, pareto_trials,
                                 register_sampler, run)
from fqopt.search._trial import SplitEvaluator, TrialObjective, WeightBank
from fqopt.search._visualization import (chosen_plans, group_accuracy_info, history_info,
                                         importance_info, layer_bits_info, pareto_front_info,
                                         plot_channel_heatmap, plot_group_accuracy,
                                         plot_history, plot_importance, plot_layer_bits,
                                         plot_pareto_front)

__all__ = [
    "run", "run_pipeline", "load_study", "pareto_trials", "write_report", "load_results",
    "PipelineConfig", "PipelineResult", "TrainOptions", "REFINE_MODES", "SearchSpace",
    "DirectSpace", "SeedTrial",
    "default_seeds", "PlanMaker", "build_plan", "register_builder", "BUILDERS", "make_sampler",
    "register_sampler", "SAMPLERS", "SplitEvaluator", "WeightBank", "TrialObjective",
    "METRIC_NAMES", "DIRECTIONS", "default_storage_url",
    "pareto_front_info", "chosen_plans", "group_accuracy_info", "layer_bits_info",
    "history_info", "importance_info", "plot_pareto_front", "plot_group_accuracy",
    "plot_layer_bits", "plot_channel_heatmap", "plot_history", "plot_importance",
]
