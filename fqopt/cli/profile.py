"""fqopt profile: per-unit, per-group, per-bit sensitivity of a run's model (docs/design.md §4.2)."""

from __future__ import annotations

from pathlib import Path

import click

from fqopt._io import check_writable
from fqopt.cli import _ui
from fqopt.cli._common import parse_bits
from fqopt.errors import UserError
from fqopt.runs import Run
from fqopt.units import GRANULARITIES, MAX_BITS, MIN_BITS

METHOD_NAMES = ("fisher", "hutchinson", "measured", "gradient", "grape")


@click.command("profile", help="Measure per-unit, per-group sensitivity; writes "
                               "RUN/sensitivity.npz.")
@_ui.run_option()
@click.option("--method", default="fisher", show_default=True,
              help=f"Sensitivity method: {', '.join(METHOD_NAMES)}.")
@click.option("--granularity", type=click.Choice(GRANULARITIES), default="channel",
              show_default=True, help="Unit: a whole layer or one output channel.")
@click.option("--bits", "bits_text", default="2,3,4,6,8", show_default=True,
              help=f"Candidate bit-widths (comma list, each {MIN_BITS}-{MAX_BITS}).")
@click.option("--calib", type=click.IntRange(1), default=1024, show_default=True,
              help="Calibration samples from the train split, stratified by group.")
@click.option("--split", type=click.Choice(["train", "search", "test"]), default="train",
              show_default=True, help="Split the calibration samples come from.")
@click.option("--quantizer", type=click.Choice(["maxabs", "mse"]), default="mse",
              show_default=True)
@click.option("--pin", default="default", show_default=True,
              help="Pinned layers recorded for the solver: default (stem and head), none, or a "
                   "comma list of layer names.")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--first-order", is_flag=True,
              help="fisher/hutchinson: add the signed gradient term g·δ to the costs.")
@click.option("--probes", type=click.IntRange(1), default=1, show_default=True,
              help="hutchinson: Rademacher probes per batch.")
@click.option("--allow-empty-groups", is_flag=True,
              help="Give groups without calibration samples zero costs instead of failing.")
@click.option("--seed", type=int, default=None, help="Calibration sampling seed [default: the "
                                                     "run's seed].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, ...")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Table to write [default: RUN/sensitivity.npz].")
@_ui.format_option
@_ui.force_option
def command(run_dir, method, granularity, bits_text, calib, split, quantizer, pin, batch_size,
            first_order, probes, allow_empty_groups, seed, device, out, fmt, force):
    # deferred: loads torch (`fqopt profile --help` stays fast)
    from fqopt.evaluation import resolve_device
    from fqopt.profiling import available_methods, profile

    if method not in available_methods():
        raise UserError(f"--method {method!r} is not a sensitivity method; expected one of "
                        f"{', '.join(available_methods())}")
    if method == "measured" and granularity != "layer":
        raise UserError("--method measured measures whole layers only; pass "
                        "--granularity layer")
    bits = parse_bits(bits_text)
    run = Run.open(run_dir)
    out = Path(out) if out else run.table_path
    check_writable(out, force, what="sensitivity table")
    model = run.model().to(resolve_device(device))
    ds = run.dataset()
    with _ui.RichProgress(transient=True) as cb:
        table = profile(model, ds, ds.split(split), method=method, granularity=granularity,
                        bits=bits, quantizer=quantizer, pin=pin, calib=calib,
                        batch_size=batch_size, seed=run.seed if seed is None else seed,
                        first_order=first_order, hutchinson_probes=probes,
                        allow_empty_groups=allow_empty_groups, model_name=run.model_name,
                        callback=cb)
    table.save(out)
    summary = {"table": str(out), "method": method, "granularity": granularity,
               "units": table.num_units, "groups": table.groups,
               "group_counts": table.group_counts.tolist(), "bits": table.bits.tolist(),
               "pinned": table.meta["pinned"], "seconds": table.meta["seconds"]}
    if fmt == "json":
        _ui.print_json(summary)
        return
    rows = [[g, int(n), float(table.costs[:, i, 0].sum()), float(table.costs[:, i, -1].sum())]
            for i, (g, n) in enumerate(zip(table.groups, table.group_counts))]
    _ui.print_table(f"{run.model_name}: {method} sensitivity, {table.num_units} {granularity} "
                    f"units, {table.meta['seconds']:.1f} s",
                    ["group", "calib samples", f"Σ cost @{table.bits[0]} bits",
                     f"Σ cost @{table.bits[-1]} bits"], rows)
    _ui.info(f"saved {out}")
