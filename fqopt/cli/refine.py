"""fqopt refine: BAQ — learn bit-widths and weights together, then round under the budget."""

from __future__ import annotations

from pathlib import Path

import click

from fqopt.cli import _ui
from fqopt.cli._common import parse_bits, quantizer_options, resolve_quantizer
from fqopt.errors import UserError
from fqopt.runs import Run
from fqopt.solvers import get_solver  # numpy only: the back-ends load when they run

FAIRNESS_HELP = "range (FairQuant), worst, cvar[:α] or dro[:η] (Group DRO)."


@click.command("refine", help="BAQ: learn bit-widths and weights together, then round under "
                              "the budget.")
@_ui.run_option()
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), required=True,
              help="Plan JSON to start from (fqopt allocate / search).")
@click.option("--budget", type=float, default=None,
              help="Budget to end within [default: the plan's recorded budget, else its "
                   "avg_bits].")
@click.option("--budget-kind", type=click.Choice(["avg_bits", "size_bytes", "bops"]),
              default=None, help="Unit of --budget [default: the plan's, else avg_bits].")
@click.option("--fairness", default="range", show_default=True, help=FAIRNESS_HELP)
@click.option("--lambda-fair", type=click.FloatRange(0), default=0.5, show_default=True,
              help="Weight λ_f of the fairness term.")
@click.option("--lambda-budget", type=click.FloatRange(0), default=1.0, show_default=True,
              help="ρ of the augmented-Lagrangian budget term (0: none while learning).")
@click.option("--epochs", type=click.IntRange(0), default=3, show_default=True,
              help="Epochs of joint bit-width and weight training.")
@click.option("--finetune-epochs", type=click.IntRange(0), default=1, show_default=True,
              help="Fixed-bit fine-tune epochs after rounding.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-4, show_default=True,
              help="Weight learning rate (AdamW).")
@click.option("--bit-lr", type=click.FloatRange(0), default=0.05, show_default=True,
              help="Bit-width learning rate (bits per step, Adam).")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--steps-per-epoch", type=click.IntRange(1), default=None,
              help="Cap on the steps of one epoch [default: one pass over the train split].")
@click.option("--min-finetune-steps", type=click.IntRange(1), default=None,
              help="Run at least this many fixed-bit steps (more fine-tune epochs on a small "
                   "train split; a short fine-tune can be worse than none).")
@click.option("--balanced", is_flag=True, help="Sample groups equally often.")
@click.option("--distill", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Weight α of distillation from the run's FP model in each sample's loss "
                   "((1 − α)·CE + α·KL); fqopt search's fine-tune uses 0.5.")
@click.option("--distill-temperature", type=click.FloatRange(0, min_open=True), default=1.0,
              show_default=True, help="Softmax temperature of the distillation.")
@click.option("--bits", "bits_text", default=None,
              help="Candidate bit-widths for the rounding [default: the plan's].")
@quantizer_options
@click.option("--solver", default="lagrange", show_default=True,
              help="Solver back-end for the rounding.")
@click.option("--allow-over-budget", is_flag=True,
              help="Accept a starting plan above the budget (the budget term pulls it down).")
@click.option("--seed", type=int, default=None, help="Seed [default: the run's seed].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, ...")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder [default: RUN/refined/<plan name>].")
@_ui.format_option
@_ui.force_option
def command(run_dir, plan_path, budget, budget_kind, fairness, lambda_fair, lambda_budget,
            epochs, finetune_epochs, lr, bit_lr, batch_size, steps_per_epoch,
            min_finetune_steps, balanced, distill, distill_temperature, bits_text, quantizer,
            override_quantizer, solver, allow_over_budget, seed, device, out_dir, fmt, force):
    # deferred: loads torch (`fqopt refine --help` stays fast)
    from fqopt.baq import finished_refinement, refine, step_time_ratio
    from fqopt.plan import AllocationPlan

    get_solver(solver)  # an unknown back-end fails before any training
    quantizer = resolve_quantizer(AllocationPlan.load(plan_path), quantizer, override_quantizer,
                                  f"plan {plan_path}")
    run = Run.open(run_dir)
    out = Path(out_dir) if out_dir else run.path / "refined" / Path(plan_path).stem
    if finished_refinement(out) and not force:
        # a finished refinement is a result: rerunning would write its model.pt again
        raise UserError(f"refine output {out} already holds a finished refinement (refine.json, "
                        "plan.json, model.pt); pass --force to redo it, or choose another --out")
    bits = parse_bits(bits_text) if bits_text else None
    with _ui.RichProgress(transient=True) as cb:
        result = refine(run, plan_path, budget=budget, budget_kind=budget_kind,
                        fairness=fairness, lambda_fair=lambda_fair,
                        lambda_budget=lambda_budget, epochs=epochs,
                        finetune_epochs=finetune_epochs, lr=lr, bit_lr=bit_lr,
                        batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                        min_finetune_steps=min_finetune_steps, balanced=balanced, distill=distill,
                        distill_temperature=distill_temperature, bits=bits,
                        quantizer=quantizer, solver=solver, seed=run.seed if seed is None
                        else seed, device=device, out_dir=out_dir, force=force,
                        allow_over_budget=allow_over_budget, callback=cb)
    summary = result.summary()
    if fmt == "json":
        _ui.print_json(summary)
        return
    static, refined = summary["static"], summary["refined"]
    rows = [["avg_bits", static["avg_bits"], refined["avg_bits"]],
            ["size (KiB)", static["size_bytes"] / 1024, refined["size_bytes"] / 1024]]
    for split in ("search", "test"):
        for key in ("avg_acc", "worst_acc", "acc_gap"):
            rows.append([f"{split} {key}", static[split][key], refined[split][key]])
    budget = summary["budget"]
    ratio = step_time_ratio(result.history)
    _ui.print_table(f"{run.model_name}: BAQ refinement ({summary['settings']['fairness']}, "
                    f"budget {budget['value']:.4g} {budget['kind']}, solver "
                    f"{summary['rounding']['backend']} {summary['rounding']['status']})",
                    ["", "static plan", "refined plan"], rows)
    if ratio is not None:
        _ui.info(f"step time: refinement / fixed-bit fine-tune = {ratio:.2f}")
    _ui.info(f"saved {result.plan_path} and {result.checkpoint}")
