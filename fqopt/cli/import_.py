"""fqopt import: a run folder from a trained checkpoint, without training."""

from __future__ import annotations

import click

from fqopt.cli import _ui
from fqopt.cli._common import parse_options, print_report
from fqopt.runs import import_checkpoint


@click.command("import", help="Create a run from a trained checkpoint (no training): profile, "
                              "search, evaluate and export then work on it.")
@click.option("--model", required=True, help="timm architecture of the checkpoint.")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="State dict: .pt/.pth (read with weights_only=True) or .safetensors; "
                   "'state_dict'/'model' wrappers and 'module.' prefixes are handled.")
@click.option("--dataset", default="synthderm", show_default=True,
              help="synthderm, fitzpatrick17k, isic2019 or csv.")
@click.option("--data-root", type=click.Path(), default=None, help="Dataset folder (real data).")
@click.option("--data-option", "data_options", multiple=True, metavar="KEY=VALUE",
              help="Loader option, repeatable (e.g. csv=labels.csv, grouping=light_dark).")
@click.option("--image-size", type=click.IntRange(8, 1024), default=None,
              help="Input resolution in px [default: the dataset's].")
@click.option("--mean", default=None, help="Input normalisation mean the model was trained "
                                           "with, e.g. 0.485,0.456,0.406 [default: the "
                                           "dataset's, 0.5].")
@click.option("--std", default=None, help="Input normalisation std, e.g. 0.229,0.224,0.225.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder to create.")
@_ui.format_option
@_ui.force_option
def command(model, checkpoint, dataset, data_root, data_options, image_size, mean, std, seed,
            run_dir, fmt, force):
    options = parse_options(data_options)
    if data_root is not None:
        options["root"] = data_root
    run = import_checkpoint(run_dir, model=model, checkpoint=checkpoint, dataset=dataset,
                            dataset_options=options, image_size=image_size, mean=mean, std=std,
                            seed=seed, force=force)
    ds = run.dataset()
    if fmt != "json":
        _ui.info(f"[bold]import[/] {model} ({run.num_classes} classes) from {checkpoint} on "
                 f"{ds.name}: {len(ds)} samples, groups {', '.join(ds.group_names)}, "
                 f"{ds.image_size}px → {run.path}")

    from fqopt.metrics import FairnessReport  # deferred: numpy (`fqopt import --help` stays fast)

    rep = FairnessReport.load(run.reports_dir / "fp_test.json")
    print_report(rep, fmt, title=f"{model} FP32 (imported), test split")
