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
                   "group losses, 100 steps); baq: BAQ, bit-widths learned too.")
@click.option("--budget", type=click.FloatRange(2.0, 8.0), default=4.0, show_default=True,
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
                              refine_mode=refine_mode,
                              report=not no_report, timeout=timeout, force=force, train=train,
                              budget=budget, callback=cb)
    res = result.results
    if fmt == "json":
        _ui.print_json({"results": str(result.results_path),
                        "report": None if result.report_path is None else
                        str(result.report_path), "study": res["study"], "check": res["check"],
                        "summary": res.get("summary"),
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

    summary = res.get("summary") or {}
    print_pareto(pareto_rows(result.run, result.study, res),
                 title=f"Pareto plans of {res['study']['name']} "
                       f"({res['study']['states'].get('complete', 0)} complete trials)",
                 recommended=(summary.get("recommended") or {}).get("trial"),
                 budget=summary.get("budget"))
    for note in result.notes:
        _ui.info(f"note: {note}")
    times = ", ".join(f"{k} {v:.0f} s" for k, v in result.stages.items())
    _ui.info(f"stages: {times}")
    print_summary(res, result.report_path)


def _kb(n) -> str:
    return "–" if n is None else f"{n / 1024:.1f} KiB"


def print_summary(res: dict, report_path=None) -> None:
    """The end of a search: which plan to use and how sure that is, in a few lines (stderr)."""
    from fqopt.search._verdict import describe, interval_text

    s = res.get("summary") or {}
    info = _ui.info
    budget = s.get("budget", 4.0)
    info(f"[bold]── summary ──[/] (95 % bootstrap intervals over the test images; a difference "
         "whose interval contains 0 is a tie)")
    fp = (res.get("fp32") or {}).get("test")
    if fp:
        info(f"FP32: test worst_acc {interval_text(fp, 'worst_acc')}, avg_acc "
             f"{interval_text(fp, 'avg_acc')}")
    rec = s.get("recommended")
    if rec is None:
        info(f"[red]No Pareto plan at ≤ {budget:g} average bits[/]: raise --budget or widen "
             "--budget-range")
    else:
        name = (rec.get("plan_file") or "").rsplit("/", 1)[-1] or f"trial {rec['trial']}"
        info(f"[bold green]Recommended at ≤ {budget:g} bits:[/] {name} — {rec['label']}, "
             f"{rec['avg_bits']:.2f} bits, {_kb(rec.get('size_bytes'))} "
             f"(best search worst_acc {rec['search']['worst_acc']:.3f} within the budget)")
        if rec.get("test"):
            info(f"  test: worst_acc {interval_text(rec['test'], 'worst_acc')} "
                 f"({rec['test'].get('worst_group')}), avg_acc "
                 f"{interval_text(rec['test'], 'avg_acc')}")
        base = s.get("best_baseline")
        if base is not None:
            info(f"  best baseline at ≤ {budget:g} bits (strongest test worst_acc of uniform, "
                 f"FairQuant, HAWQ-style): {base['label']} ({base['avg_bits']:.2f} "
                 f"bits), test worst_acc {interval_text(base.get('test'), 'worst_acc')}, avg_acc "
                 f"{interval_text(base.get('test'), 'avg_acc')}")
            cmp = s.get("comparison")
            how = "paired" if cmp and "paired" in cmp.get("method", "") else "unpaired"
            info(f"  recommended − baseline ({how}): worst_acc {describe(cmp, 'worst_acc')}; "
                 f"avg_acc {describe(cmp, 'avg_acc')}")
        if s.get("export_command"):
            info(f"  export it: {s['export_command']}")
    for r in s.get("refined") or []:
        cmp = r.get("comparison")
        src = (r.get("from") or "").rsplit("/", 1)[-1]
        sw = r.get("search_worst_acc") or {}
        chosen = "search worst_acc {:.3f} vs {:.3f}".format(
            sw.get("refined") or float("nan"), sw.get("static") or float("nan"))
        word = (f"deploy the refined model: its plan with its checkpoint ({chosen})"
                if r.get("use_refined") else
                f"keep {src}, it needs no refined checkpoint ({chosen})")
        info(f"Refined ({r['label']}, {r['avg_bits']:.2f} bits): test worst_acc "
             f"{interval_text(r.get('test'), 'worst_acc')} against "
             f"{interval_text(r.get('source_test'), 'worst_acc')} before; "
             f"{describe(cmp, 'worst_acc')} — {word}")
        if r.get("export_command"):
            info(f"  export it: {r['export_command']}")
    st = res.get("study") or {}
    info(f"Study {st.get('name')} in {st.get('storage')} "
         f"({(st.get('states') or {}).get('complete', 0)} complete trials); open it with:")
    info(f"  {st.get('dashboard')}")
    if report_path is not None:
        info(f"Report: {report_path}")
    info(f"Results: {res.get('run', {}).get('path')}/reports/search_test.json; "
         "plans in its plans/ folder (`fqopt show` lists them)")
