"""fqopt export: packed low-bit weights of a run's model under a plan (docs/design.md §4.8)."""

from __future__ import annotations

from pathlib import Path

import click

from fqopt._io import check_writable
from fqopt.cli import _ui
from fqopt.cli._common import quantizer_options, resolve_quantizer
from fqopt.errors import UserError
from fqopt.runs import Run
from fqopt.units import MAX_BITS, MIN_BITS


@click.command("export", help="Write packed low-bit weights (safetensors) or an ONNX model "
                              "with integer weights (--format onnx) for a plan; with --check, "
                              "verify an existing export instead.")
@click.option("--run", "run_dir", default=None, type=click.Path(file_okay=False),
              help="Run folder whose trained model is exported [default: runs/default].")
@click.option("--plan", type=click.Path(dir_okay=False), default=None,
              help="Plan JSON giving every unit's bit-width.")
@click.option("--uniform", type=click.IntRange(MIN_BITS, MAX_BITS), default=None,
              help="Uniform bit-width instead of a plan (pinned layers stay at their bits).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="File to write [default: RUN/exports/<plan name>.safetensors or .onnx].")
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
@click.option("--format", "formats", multiple=True,
              type=click.Choice(["safetensors", "onnx", "table", "json"]),
              help="File format (safetensors [default] or onnx: Conv/Linear weights as INT4/INT8 "
                   "with DequantizeLinear, for onnxruntime) and/or output format (table "
                   "[default] or json); repeatable, e.g. --format onnx --format json.")
@_ui.force_option
def command(run_dir, plan, uniform, out, checkpoint, quantizer, override_quantizer,
            allow_over_budget, check_file, formats, force):
    kinds = [f for f in formats if f in ("safetensors", "onnx")]
    if len(set(kinds)) > 1:
        raise click.UsageError("--format: give one file format, safetensors or onnx")
    file_format = kinds[0] if kinds else "safetensors"
    fmt = "json" if "json" in formats else "table"
    if "json" in formats and "table" in formats:
        raise click.UsageError("--format: give one output format, table or json")
    if check_file is not None:
        if file_format == "onnx":
            raise click.UsageError("--check verifies safetensors exports only")
        _check(check_file, run_dir, plan, uniform, out, checkpoint, fmt)
        return

    # deferred: loads torch (`fqopt export --help` stays fast)
    from fqopt import packed as ex

    if (plan is None) == (uniform is None):
        raise click.UsageError("give --plan PLAN or --uniform BITS (one of them)")
    # deferred: loads numpy (`fqopt export --help` stays fast)
    from fqopt.plan import AllocationPlan

    recorded = AllocationPlan.load(plan) if plan is not None else None
    quantizer = resolve_quantizer(recorded, quantizer, override_quantizer, f"plan {plan}")
    run = Run.open(run_dir or "runs/default")
    stem = Path(plan).stem if plan else f"uniform{uniform}"
    suffix = ".onnx" if file_format == "onnx" else ".safetensors"
    out = Path(out) if out else run.path / "exports" / f"{stem}{suffix}"

    check_writable(out, force, what="export")  # before any work
    model = _run_model(run, checkpoint)
    if plan is not None:
        p = plan  # a path: export() loads it and names it in its messages
    else:
        # deferred: loads torch (`fqopt export --help` stays fast)
        from fqopt.discovery import discover_units

        p = AllocationPlan.uniform(discover_units(model, "layer"), uniform,
                                   model=run.model_name, quantizer=quantizer)
    if file_format == "onnx":
        _export_onnx(run, model, p, out, quantizer, allow_over_budget, force, fmt)
        return
    info = ex.export(model, p, out, quantizer=quantizer, model_name=run.model_name,
                     num_classes=run.num_classes, image_size=run.image_size, force=force,
                     allow_over_budget=allow_over_budget)
    diff = ex.verify(out, model, image_size=run.image_size)
    _print(info, fmt, verified=diff, title=f"{run.model_name} → {out}")


def _export_onnx(run, model, plan, out, quantizer, allow_over_budget, force, fmt):
    # deferred: loads torch and numpy (`fqopt export --help` stays fast)
    import numpy as np
    import torch
    from fqopt.apply import quantized, resolve_plan
    from fqopt.onnx_export import export_onnx, run_onnx

    p = resolve_plan(model, plan)
    info = export_onnx(model, p, out, method=quantizer, image_size=run.image_size,
                       force=force, allow_over_budget=allow_over_budget)
    x = torch.randn(2, 3, run.image_size, run.image_size,
                    generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), quantized(model, p, method=info.quantizer):
        want = model(x).numpy()
    diff = float(np.abs(run_onnx(out, x) - want).max())
    d = info.to_dict()
    d["onnxruntime_max_abs_diff"] = diff
    if fmt == "json":
        _ui.print_json(d)
        return
    rows = [["file", d["path"]], ["file bytes", f"{info.file_bytes:,}"],
            ["quantized layers", info.layers],
            ["channels as INT4 / INT8", f"{info.int4_channels:,} / {info.int8_channels:,}"],
            ["avg bits", f"{info.avg_bits:.4f}"], ["quantizer", info.quantizer],
            ["onnxruntime vs fake-quantized", f"max |Δ| = {diff:.3g}"]]
    _ui.print_table(f"{run.model_name} → {out}", ["", "value"], rows)


def _run_model(run, checkpoint):
    if checkpoint is None:
        return run.model()
    # deferred: loads torch (`fqopt export --help` stays fast)
    from fqopt import models

    model = run.new_model()
    models.load_weights(model, checkpoint, name=run.model_name)
    return model.eval()


def _check(path, run_dir, plan, uniform, out, checkpoint, fmt):
    # deferred: loads torch (`fqopt export --help` stays fast)
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
        run = Run.open(run_dir)
        if run.model_name != ef.model_name:
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
        ["plan size_bytes", f"{info.plan_size_bytes:,}"],
        ["avg bits", f"{info.avg_bits:.4f}"],
        ["quantizer", info.quantizer],
    ]
    if verified is not None:
        rows.append(["outputs vs fake-quantized", f"max |Δ| = {verified:.3g}"])
    _ui.print_table(title, ["", "value"], rows)
