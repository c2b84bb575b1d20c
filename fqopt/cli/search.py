"""fqopt search: the Optuna multi-objective search (with no arguments, the whole pipeline)."""

from __future__ import annotations

import click
from rich.markup import escape

from fqopt import search  # light: its names load torch and Optuna on first use
from fqopt.cli import _ui
from fqopt.cli._render import print_pareto, print_summary
from fqopt.errors import UserError


def _split_list(text: str, what: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    if not items:
        raise UserError(f"{what} must be a comma list, got {text!r}")
    return items


def _check_names(methods, quantizers) -> None:
    # deferred: both modules load torch (`fqopt search --help` stays fast)
    from fqopt.profiling import available_methods
    from fqopt.quantizers import QUANTIZERS

    for option, given, known in (("--methods", methods, available_methods()),
                                 ("--quantizers", quantizers, QUANTIZERS)):
        bad = [x for x in given if x not in known]
        if bad:
            raise UserError(f"{option}: {', '.join(map(repr, bad))} "
                            f"{'is not a known name' if len(bad) == 1 else 'are not known names'}"
                            f"; expected some of {', '.join(known)}")


@click.command("search", help="Optuna multi-objective search over plans. With no arguments: "
                              "train the default run if needed, profile, search, re-evaluate "
                              "the Pareto plans on the test split and write the report.")
@_ui.run_option()
@click.option("--trials", type=click.IntRange(1), default=search.DEFAULT_TRIALS,
              show_default=True,
              help="Complete trials the study should hold in total (a resumed or shared study "
                   "runs only the missing ones).")
@click.option("--storage", default=None,
              help="Optuna storage URL [default: sqlite:///RUN/study.db]; e.g. "
                   "postgresql+psycopg://user@host/db to share one study between machines.")
@click.option("--study", "study_name", default=None,
              help="Study name [default: fqopt-<model>-<granularity>].")
@click.option("--sampler", type=click.Choice(["nsga2", "tpe"]), default="nsga2",
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Sampler seed (and training/profiling seed of a new run).")
@click.option("--granularity", type=click.Choice(["layer", "channel"]), default="channel",
              show_default=True, help="Unit: a whole layer or one output channel.")
@click.option("--methods", default="fisher,gradient,grape", show_default=True,
              help="Sensitivity methods the trials choose from (gradient and grape also give "
                   "the FairQuant baselines).")
@click.option("--quantizers", default="mse", show_default=True,
              help="Quantizers the trials choose from (maxabs, mse); the tables are profiled "
                   "with mse when it is one of them, else with the first.")
@click.option("--budget-range", default="2.5:7", show_default=True,
              help="Budgets the trials sample, in average bits LOW:HIGH.")
@click.option("--direct", is_flag=True,
              help="Optuna picks every layer's bits itself (layer granularity; the budget "
                   "range becomes a constraint).")
@click.option("--refine-top", type=click.IntRange(0), default=1, show_default=True,
              help="Refine this many Pareto plans (≤ --budget bits, best search worst_acc); "
                   "0 skips.")
@click.option("--refine", "refine_mode", type=click.Choice(["finetune", "baq"]),
              default="finetune", show_default=True,
              help="finetune: fixed-bit fine-tuning of the plan's weights (CE + 0.5·range of "
                   "group losses and distillation, 2 epochs of ≤ 50 steps); baq: BAQ, bit-widths "
                   "learned too.")
@click.option("--budget", type=click.FloatRange(2.0, 8.0), default=search.DEFAULT_BUDGET,
              show_default=True,
              help="Average bits per weight the summary recommends a plan for (the Pareto plan "
                   "with the best search worst_acc at or below it).")
@click.option("--no-report", is_flag=True, help="Skip report.html and the figures.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop starting new trials after this many seconds.")
@click.option("--force", is_flag=True,
              help="Delete the study and start the search over (the trained model and the "
                   "tables are kept).")
@click.option("--dataset", default=None,
              help="Dataset of a new run (when RUN has none) [default: synthderm].")
@click.option("--model", default=None, help="timm architecture of a new run [default: "
                                            "test_resnet].")
@click.option("--samples", type=click.IntRange(12), default=None,
              help="synthderm samples of a new run.")
@click.option("--image-size", type=click.IntRange(8, 1024), default=None,
              help="Input resolution of a new run.")
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="Training epochs of a new run [default: fqopt train's].")
@_ui.format_option
def command(run_dir, trials, storage, study_name, sampler, seed, granularity, methods,
            quantizers, budget_range, direct, refine_top, refine_mode, budget, no_report,
            timeout, force,
            dataset, model, samples, image_size, epochs, fmt):
    search.quiet_optuna()
    lo_hi = search.parse_budget_range(budget_range)
    method_list = _split_list(methods, "--methods")
    quantizer_list = _split_list(quantizers, "--quantizers")
    _check_names(method_list, quantizer_list)  # before training, profiling or any storage
    train = search.TrainOptions(dataset=dataset, model=model, samples=samples,
                                image_size=image_size, epochs=epochs, seed=seed)
    # run_pipeline checks the storage and an existing study first (search.precheck), before
    # the progress display has drawn anything
    with _ui.RichProgress() as cb:
        result = search.run_pipeline(run_dir, n_trials=trials, storage=storage,
                                     study_name=study_name, sampler=sampler, seed=seed,
                                     granularity=granularity, methods=method_list,
                                     quantizers=quantizer_list, budget_range=lo_hi,
                                     direct=direct, refine_top=refine_top,
                                     refine_mode=refine_mode, report=not no_report,
                                     timeout=timeout, force=force, train=train,
                                     budget=budget, callback=cb)
    res = result.results
    summary = res.summary
    if fmt == "json":
        _ui.print_json({"results": str(result.results_path),
                        "report": None if result.report_path is None else
                        str(result.report_path), "study": res.study.to_dict(),
                        "check": res.check.to_dict(),
                        "summary": None if summary is None else summary.to_dict(),
                        "stages": result.stages, "notes": result.notes,
                        "pareto": [{"index": r.index, "trial": r.trial, "label": r.label,
                                    "avg_bits": r.avg_bits, "plan_file": r.plan_file,
                                    "search": {m: r.search.get(m) for m in
                                               ("avg_acc", "worst_acc")},
                                    "test": {m: r.test.get(m) for m in
                                             ("avg_acc", "worst_acc")}}
                                   for r in res.pareto]})
        return
    recommended = None if summary is None or summary.recommended is None else \
        summary.recommended.trial
    print_pareto(search.pareto_rows(result.run, result.study, res),
                 title=f"Pareto plans of {res.study.name} "
                       f"({res.study.states.get('complete', 0)} complete trials)",
                 recommended=recommended, budget=None if summary is None else summary.budget)
    for note in result.notes:
        # notes are plain text: "[bench]" in an install hint is not rich markup
        _ui.info(f"note: {escape(note)}")
    times = ", ".join(f"{k} {v:.0f} s" for k, v in result.stages.items())
    _ui.info(f"stages: {times}")
    print_summary(res, result.report_path)
