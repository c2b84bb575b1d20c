"""fqopt search: the Optuna multi-objective search (with no arguments, the whole pipeline)."""

from __future__ import annotations

import click

from fqopt.cli import _ui

# keep in sync with fqopt.search._study.DEFAULT_TRIALS (not imported: `fqopt --help` stays fast)
DEFAULT_TRIALS = 100


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO and warns about experimental features we rely on
    (heartbeats, metric names, constraints); the CLI shows its own progress instead."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _split_list(text: str, what: str) -> tuple[str, ...]:
    from fqopt.errors import UserError

    items = tuple(x.strip() for x in text.split(",") if x.strip())
    if not items:
        raise UserError(f"{what} must be a comma list, got {text!r}")
    return items


def _check_names(methods, quantizers) -> None:
    from fqopt.errors import UserError
    from fqopt.profiling import available_methods
    from fqopt.quantizers import METHODS as QUANTIZERS

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
@click.option("--trials", type=click.IntRange(1), default=DEFAULT_TRIALS, show_default=True,
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
@click.option("--quantizers", default="maxabs,mse", show_default=True,
              help="Quantizers the trials choose from.")
@click.option("--budget-range", default="2.5:7", show_default=True,
              help="Budgets the trials sample, in average bits LOW:HIGH.")
@click.option("--direct", is_flag=True,
              help="Optuna picks every layer's bits itself (layer granularity; the budget "
                   "range becomes a constraint).")
@click.option("--refine-top", type=click.IntRange(0), default=1, show_default=True,
              help="Refine this many Pareto plans (≤ 4.5 bits, best search worst_acc) with "
                   "BAQ; 0 skips.")
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
            quantizers, budget_range, direct, refine_top, no_report, timeout, force, dataset,
            model, samples, image_size, epochs, fmt):
    from fqopt.search._pipeline import TrainOptions, precheck, run_pipeline
    from fqopt.search._space import parse_budget_range

    quiet_optuna()
    lo_hi = parse_budget_range(budget_range)
    method_list = _split_list(methods, "--methods")
    quantizer_list = _split_list(quantizers, "--quantizers")
    _check_names(method_list, quantizer_list)  # before training, profiling or any storage
    train = TrainOptions(dataset=dataset, model=model, samples=samples, image_size=image_size,
                         epochs=epochs, seed=seed)
    precheck(run_dir, storage=storage, study_name=study_name, granularity=granularity,
             direct=direct, force=force)
    with _ui.RichProgress() as cb:
        result = run_pipeline(run_dir, n_trials=trials, storage=storage, study_name=study_name,
                              sampler=sampler, seed=seed, granularity=granularity,
                              methods=method_list, quantizers=quantizer_list,
                              budget_range=lo_hi, direct=direct, refine_top=refine_top,
                              report=not no_report, timeout=timeout, force=force, train=train,
                              callback=cb)
    res = result.results
    if fmt == "json":
        _ui.print_json({"results": str(result.results_path),
                        "report": None if result.report_path is None else
                        str(result.report_path), "study": res["study"], "check": res["check"],
                        "stages": result.stages, "notes": result.notes,
                        "pareto": [{k: r[k] for k in ("index", "trial", "label", "avg_bits",
                                                      "plan_file")}
                                   | {"search": {m: r["search"][m] for m in
                                                 ("avg_acc", "worst_acc")},
                                      "test": {m: r["test"][m] for m in
                                               ("avg_acc", "worst_acc")}}
                                   for r in res["pareto"]]})
        return
    from fqopt.cli.show import print_pareto
    from fqopt.search._report import pareto_rows

    print_pareto(pareto_rows(result.run, result.study, res),
                 title=f"Pareto plans of {res['study']['name']} "
                       f"({res['study']['states'].get('complete', 0)} complete trials)")
    fp = res["fp32"]["test"]
    uni = next((b for b in res["baselines"] if b.get("seed") == "uniform:4"), None)
    line = f"FP32 test: avg_acc {fp['avg_acc']:.4f}, worst_acc {fp['worst_acc']:.4f}"
    if uni:
        line += (f"; uniform 4-bit ({uni['avg_bits']:.2f} b): avg_acc "
                 f"{uni['test']['avg_acc']:.4f}, worst_acc {uni['test']['worst_acc']:.4f}")
    _ui.info(line)
    chk = res["check"]
    if chk.get("best_plan") and chk.get("uniform_test_worst_acc") is not None:
        b = chk["best_plan"]

        def verdict(ok):
            return "[green]>[/]" if ok else "[red]≤[/]"

        line = (f"best Pareto plan ≤ {chk['bits']} bits: pareto-{b['index']:02d} "
                f"({b['avg_bits']:.2f} b), test worst_acc {b['test_worst_acc']:.4f} "
                f"{verdict(chk['passed'])} uniform 4-bit {chk['uniform_test_worst_acc']:.4f}")
        if chk.get("uniform_all_layers_test_worst_acc") is not None:
            line += (f", {verdict(chk['passed_all_layers'])} uniform 4-bit all layers "
                     f"{chk['uniform_all_layers_test_worst_acc']:.4f}")
        _ui.info(line)
    for note in result.notes:
        _ui.info(f"note: {note}")
    times = ", ".join(f"{k} {v:.0f} s" for k, v in result.stages.items())
    _ui.info(f"stages: {times}")
    _ui.info(f"saved {result.results_path}" + (f", {result.report_path}"
                                                if result.report_path else ""))
