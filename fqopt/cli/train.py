"""fqopt train: the full-precision baseline of a run."""

from __future__ import annotations

import click

from fqopt.cli import _ui
from fqopt.cli._common import parse_options, print_report


def train_run(run_dir, *, dataset="synthderm", model=None, image_size=None, samples=None,
              data_root=None, data_options=(), seed=0, force=False, config=None,
              fmt="table", quiet=False, init=None):
    """Create (or resume) a run and train it; shared with ``fqopt search``."""
    from pathlib import Path

    from fqopt.errors import UserError
    from fqopt.evaluation import evaluate
    from fqopt.runs import Run
    from fqopt.training import TrainConfig, train

    options = parse_options(data_options)
    if data_root is not None:
        options["root"] = data_root
    if samples is not None:
        if dataset != "synthderm":
            raise UserError("--samples applies to the synthderm dataset only")
        options["n"] = int(samples)
    config = config or TrainConfig(seed=seed)
    path = Path(run_dir)
    if (path / "config.json").exists() and not force:
        run = Run.open(path)
        if run.has_model() and not run.train_state_path.exists():
            raise UserError(f"run {path} already has a trained model; pass --force to retrain")
        state_done = False
        if run.train_state_path.exists():
            import torch

            saved = torch.load(run.train_state_path, map_location="cpu", weights_only=True)
            state_done = bool(saved["state"].get("finished"))
        if state_done:
            raise UserError(f"run {path} is already trained; pass --force to retrain")
        want_model = model or run.model_name
        if want_model != run.model_name or dataset != run.config["dataset"]["name"]:
            raise UserError(f"run {path} holds {run.config['dataset']['name']}/{run.model_name},"
                            f" not {dataset}/{want_model}; pass --force to start over")
        if not quiet:
            _ui.info(f"resuming training of {path}")
        if init is not None and str(init) != (run.config.get("init") or {}).get("path"):
            raise UserError(f"run {path} was not started from --init {init}; pass --force to "
                            "start over")
    else:
        input_config, init_info = None, None
        if init is not None:
            input_config, init_info, image_size = _check_init(init, model, image_size)
        run = Run.create(path, dataset=dataset, dataset_options=options, model=model,
                         image_size=image_size, seed=seed, force=force,
                         input_config=input_config)
        if init_info is not None:
            from fqopt import models

            fresh = models.init_from(run.new_model(), init, name=run.model_name)
            init_info["reinitialised"] = fresh
            run.config["init"] = init_info
            run.save_config()
            if fresh and not quiet:
                _ui.info(f"--init: the classifier head ({', '.join(fresh)}) has another class "
                         f"count than {init}; it is re-initialised for {run.num_classes} "
                         "classes")
    ds = run.dataset()
    if not quiet:
        _ui.info(f"[bold]train[/] {run.model_name} on {ds.name}: {len(ds)} samples, "
                 f"{ds.num_classes} classes, groups {', '.join(ds.group_names)}, "
                 f"{ds.image_size}px → {path}")
    with _ui.RichProgress(transient=True) as cb:
        result = train(run, config, callback=cb)
    rep = evaluate(run.model(), ds, "test")
    run.reports_dir.mkdir(parents=True, exist_ok=True)
    rep.save(run.reports_dir / "fp_test.json")
    if not quiet:
        _ui.info(f"best epoch {result['best_epoch']} (search avg_acc "
                 f"{result['best_avg_acc']:.4f}); FP32 test figures:")
        print_report(rep, fmt, title=f"{run.model_name} FP32, test split")
    return run, rep


def _check_init(init, model, image_size):
    """(input config, init record, image size) for ``--init``: the file must fit the
    architecture (head aside) before any run folder is written."""
    import hashlib
    from pathlib import Path

    from fqopt import models

    name = model or models.DEFAULT_MODEL
    probe = models.create(name, 7)
    models.init_from(probe, init, name=name)   # UserError naming the first bad tensor
    cfg = models.pretrained_input(name)
    if image_size is None and cfg.get("image_size"):
        image_size = cfg["image_size"]
    info = {"path": str(init), "sha256": hashlib.sha256(Path(init).read_bytes()).hexdigest()}
    return cfg, info, image_size


@click.command("train", help="Train the full-precision baseline of a run.")
@click.option("--dataset", default="synthderm", show_default=True,
              help="synthderm, fitzpatrick17k, isic2019 or csv.")
@click.option("--model", default=None, help="timm architecture [default: test_resnet].")
@click.option("--out", "run_dir", default="runs/default", show_default=True,
              type=click.Path(file_okay=False), help="Run folder to create (or resume).")
@click.option("--image-size", type=click.IntRange(8, 1024), default=None,
              help="Input resolution in px [default: the dataset's].")
@click.option("--samples", type=click.IntRange(12), default=None,
              help="synthderm: number of samples to generate.")
@click.option("--data-root", type=click.Path(), default=None, help="Dataset folder (real data).")
@click.option("--data-option", "data_options", multiple=True, metavar="KEY=VALUE",
              help="Loader option, repeatable (e.g. grouping=light_dark, target=label).")
@click.option("--epochs", type=click.IntRange(1), default=25, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--weight-decay", type=float, default=0.05, show_default=True)
@click.option("--balanced", is_flag=True, help="Group-balanced sampling.")
@click.option("--patience", type=click.IntRange(1), default=8, show_default=True,
              help="Early stopping: epochs without a better search avg_acc.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--init", type=click.Path(dir_okay=False), default=None,
              help="Fine-tune from these local pretrained weights (e.g. timm ImageNet weights "
                   "on disk; a head of another class count is re-initialised). The input "
                   "normalisation and resolution of timm's pretrained config of --model are "
                   "recorded in the run and used by every later stage.")
@_ui.format_option
@_ui.force_option
def command(dataset, model, run_dir, image_size, samples, data_root, data_options, epochs,
            batch_size, lr, weight_decay, balanced, patience, seed, device, init, fmt, force):
    from fqopt.training import TrainConfig

    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         balanced=balanced, patience=patience, seed=seed, device=device)
    train_run(run_dir, dataset=dataset, model=model, image_size=image_size, samples=samples,
              data_root=data_root, data_options=data_options, seed=seed, force=force,
              config=config, fmt=fmt, init=init)
