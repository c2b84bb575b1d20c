"""fqopt export: packed low-bit weights of a run's model under a plan (DESIGN.md §4.8)."""

from __future__ import annotations

import click

from fqopt.cli import _ui
from fqopt.cli._common import quantizer_options, resolve_quantizer


@click.command("export", help="Write packed low-bit weights (safetensors) for a plan; with "
                              "--check, verify an existing export instead.")
@click.option("--run", "run_dir", default=None, type=click.Path(file_okay=False),
              help="Run folder whose trained model is exported [default: runs/default].")
@click.option("--plan", type=click.Path(dir_okay=False), default=None,
              help="Plan JSON giving every unit's bit-width.")
@click.option("--uniform", type=click.IntRange(2, 8), default=None,
              help="Uniform bit-width instead of a plan (pinned layers stay at their bits).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="File to write [default: RUN/exports/<plan name>.safetensors].")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Export these weights (a state dict, e.g. a fine-tuned model) instead of "
                   "RUN/model.pt.")
@quantizer_options
@click.option("--allow-over-budget", is_flag=True,
              help="Export a plan even if it exceeds the budget it records.")
@click.option("--check", "check_file", type=click.Path(dir_okay=False), default=None,
              help="Verify FILE instead of writing: format, checksum, the plan it was made from "
                   "(with --plan) and, with --run, that it reproduces the run's fake-quantized "
                   "model.")
@_ui.format_option
@_ui.force_option
def command(run_dir, plan, uniform, out, checkpoint, quantizer, override_quantizer,
            allow_over_budget, check_file, fmt, force):
    if check_file is not None:
        _check(check_file, run_dir, plan, uniform, out, checkpoint, fmt)
        return
    from pathlib import Path

    from fqopt import packed as ex
    from fqopt.runs import Run

    if (plan is None) == (uniform is None):
        raise click.UsageError("give --plan PLAN or --uniform BITS (one of them)")
    from fqopt.plan import AllocationPlan

    recorded = AllocationPlan.load(plan) if plan is not None else None
    quantizer = resolve_quantizer(recorded, quantizer, override_quantizer, f"plan {plan}")
    run = Run.open(run_dir or "runs/default")
    stem = Path(plan).stem if plan else f"uniform{uniform}"
    out = Path(out) if out else run.path / "exports" / f"{stem}.safetensors"
    from fqopt._io import check_writable

    check_writable(out, force, what="export")  # before any work
    model = _run_model(run, checkpoint)
    if plan is not None:
        p = plan  # a path: export() loads it and names it in its messages
    else:
        from fqopt.units import discover_units

        p = AllocationPlan.uniform(discover_units(model, "layer"), uniform,
                                   model=run.model_name, quantizer=quantizer)
    info = ex.export(model, p, out, quantizer=quantizer, model_name=run.model_name,
                     num_classes=run.num_classes, image_size=run.image_size, force=force,
                     allow_over_budget=allow_over_budget)
    diff = ex.verify(out, model, image_size=run.image_size)
    _print(info, fmt, verified=diff, title=f"{run.model_name} → {out}")


def _run_model(run, checkpoint):
    if checkpoint is None:
        return run.model()
    from fqopt import models

    model = run.new_model()
    models.load_weights(model, checkpoint, name=run.model_name)
    return model.eval()


def _check(path, run_dir, plan, uniform, out, checkpoint, fmt):
    from fqopt import packed as ex

    if uniform is not None or out is not None:
        raise click.UsageError("--check verifies a file: it takes --run, --plan and "
                               "--checkpoint only")
    if checkpoint is not None and run_dir is None:
        raise click.UsageError("--checkpoint needs --run (the architecture to load it into)")
    ef = ex.read_export(path)
    if plan is not None:
        ex.check_same_plan(ef, plan)
    diff = None
    if run_dir is not None:
        from fqopt.runs import Run

        run = Run.open(run_dir)
        if run.model_name != ef.model_name:
            from fqopt.errors import UserError

            raise UserError(f"export {path} holds model {ef.model_name!r}, but run {run.path} "
                            f"is {run.model_name!r}")
        model = _run_model(run, checkpoint)
        diff = ex.verify(path, model, image_size=run.image_size)
    else:
        model = ex.load_quantized(path)  # the model must rebuild from the file alone
    buffers = ex.theoretical_bytes(model, ef.plan)["buffers"]
    _print(ef.info(buffer_bytes=buffers), fmt, verified=diff,
           title=f"{ef.model_name} ← {path}")


def _print(info, fmt, *, verified, title):
    d = info.to_dict()
    d["verified_max_abs_diff"] = verified
    if fmt == "json":
        _ui.print_json(d)
        return
    rows = [
        ["file", d["path"]],
        ["file bytes", f"{info.file_bytes:,}"],
        ["theoretical bytes", f"{info.theoretical_bytes:,.1f}"],
        ["ratio (file / theoretical)", f"{info.ratio:.4f}"],
        ["ratio without header", f"{info.data_ratio:.6f}"],
        ["header bytes", f"{info.header_bytes:,}"],
        ["  packed weights", f"{info.weight_bytes:,.1f}"],
        ["  scales", f"{info.scale_bytes:,}"],
        ["  float parameters + buffers", f"{info.state_bytes:,}"],
        ["  of which buffers", "-" if info.buffer_bytes is None else f"{info.buffer_bytes:,}"],
        ["plan size_bytes (no buffers)", f"{info.plan_size_bytes:,}"],
        ["avg bits", f"{info.avg_bits:.4f}"],
        ["quantizer", info.quantizer],
    ]
    if verified is not None:
        rows.append(["outputs vs fake-quantized", f"max |Δ| = {verified:.3g}"])
    _ui.print_table(title, ["", "value"], rows)
