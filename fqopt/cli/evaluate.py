"""fqopt evaluate: fairness report of the FP model or of a quantization plan."""

from __future__ import annotations

from pathlib import Path

import click

from fqopt._io import check_writable
from fqopt.cli import _ui
from fqopt.cli._common import (load_plan_or_uniform, print_report, quantizer_options,
                               resolve_quantizer)
from fqopt.runs import Run
from fqopt.units import MAX_BITS, MIN_BITS


@click.command("evaluate", help="Fairness report of the FP model or of a quantization plan.")
@_ui.run_option()
@click.option("--plan", type=click.Path(dir_okay=False), default=None,
              help="Plan JSON to apply (fake quantization).")
@click.option("--uniform", type=click.IntRange(MIN_BITS, MAX_BITS), default=None,
              help="Uniform bit-width for every unit (pinned layers stay at their bits).")
@click.option("--split", type=click.Choice(["train", "search", "test"]), default="test",
              show_default=True)
@quantizer_options
@click.option("--bootstrap", type=click.IntRange(0), default=0, show_default=True,
              help="Bootstrap resamples for confidence intervals (0: none).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Report JSON [default: RUN/reports/eval_<what>_<split>.json; an existing "
                   "report is kept unless --force].")
@_ui.format_option
@_ui.force_option
def command(run_dir, plan, uniform, split, quantizer, override_quantizer, bootstrap, out, fmt,
            force):
    # deferred: loads torch (`fqopt evaluate --help` stays fast)
    from fqopt.evaluation import evaluate

    if plan is not None and uniform is not None:
        raise click.UsageError("give --plan or --uniform, not both")
    run = Run.open(run_dir)
    model = run.model()
    recorded = None
    if plan is not None:
        # deferred: loads numpy (`fqopt evaluate --help` stays fast)
        from fqopt.plan import AllocationPlan

        # the plan's quantizer decides the default report name: check before loading the data
        recorded = AllocationPlan.load(plan)
        quantizer = resolve_quantizer(recorded, quantizer, override_quantizer, f"plan {plan}")
    else:
        quantizer = resolve_quantizer(None, quantizer, override_quantizer, "")
    p = load_plan_or_uniform(run, model, plan, uniform, quantizer=quantizer)
    what = "fp32" if p is None else (f"uniform{uniform}" if uniform else Path(plan).stem)
    if (recorded is not None and quantizer != recorded.quantizer) or (
            uniform is not None and quantizer != "maxabs"):
        what += f"-{quantizer}"  # a report of another quantizer never takes the plan's name
    # reports are results: an existing one is kept unless --force (as every fqopt output),
    # checked before the evaluation runs
    out = check_writable(Path(out) if out else run.reports_dir / f"eval_{what}_{split}.json",
                         force, what="report")
    ds = run.dataset()
    with _ui.RichProgress(transient=True) as cb:
        rep = evaluate(model, ds, split, plan=p, quantizer=quantizer, bootstrap=bootstrap,
                       seed=run.seed, callback=cb)
    rep.save(out)
    title = f"{run.model_name} {what}, {split} split"
    if p is not None:
        title += f" (avg_bits {p.avg_bits:.3f}, {p.size_bytes / 1024:.1f} KiB)"
    print_report(rep, fmt, title=title)
    _ui.info(f"saved {out}")
