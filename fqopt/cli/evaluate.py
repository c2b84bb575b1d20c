"""fqopt evaluate: fairness report of the FP model or of a quantization plan."""

from __future__ import annotations

import click

from fqopt.cli import _ui
from fqopt.cli._common import load_plan_or_uniform, print_report


@click.command("evaluate", help="Fairness report of the FP model or of a quantization plan.")
@_ui.run_option()
@click.option("--plan", type=click.Path(dir_okay=False), default=None,
              help="Plan JSON to apply (fake quantization).")
@click.option("--uniform", type=click.IntRange(2, 8), default=None,
              help="Uniform bit-width for every unit (pinned layers stay at their bits).")
@click.option("--split", type=click.Choice(["train", "search", "test"]), default="test",
              show_default=True)
@click.option("--quantizer", type=click.Choice(["maxabs", "mse"]), default="maxabs",
              show_default=True)
@click.option("--bootstrap", type=click.IntRange(0), default=0, show_default=True,
              help="Bootstrap resamples for confidence intervals (0: none).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Report JSON [default: RUN/reports/eval_<what>_<split>.json].")
@_ui.format_option
def command(run_dir, plan, uniform, split, quantizer, bootstrap, out, fmt):
    from pathlib import Path

    from fqopt.evaluation import evaluate
    from fqopt.runs import Run

    run = Run.open(run_dir)
    model = run.model()
    p = load_plan_or_uniform(run, model, plan, uniform)
    ds = run.dataset()
    with _ui.RichProgress(transient=True) as cb:
        rep = evaluate(model, ds, split, plan=p, quantizer=quantizer, bootstrap=bootstrap,
                       seed=run.seed, callback=cb)
    what = "fp32" if p is None else (f"uniform{uniform}" if uniform else Path(plan).stem)
    out = Path(out) if out else run.reports_dir / f"eval_{what}_{split}.json"
    rep.save(out)
    title = f"{run.model_name} {what}, {split} split"
    if p is not None:
        title += f" (avg_bits {p.avg_bits:.3f}, {p.size_bytes / 1024:.1f} KiB)"
    print_report(rep, fmt, title=title)
    _ui.info(f"saved {out}")
