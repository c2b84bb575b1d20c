"""fqopt train: the full-precision baseline of a run."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import click

from fqopt.cli import _ui
from fqopt.cli._common import parse_options, print_report
from fqopt.errors import UserError
from fqopt.runs import Run, training_session


def train_run(run_dir, *, dataset="synthderm", model=None, image_size=None, samples=None,
              data_root=None, data_options=(), seed=0, force=False, config=None,
              fmt="table", quiet=False, init=None):
    """Create (or resume) a run and train it; shared with ``fqopt search``. ``init``: local
    pretrained weights to fine-tune from (``fqopt train --init``).

    Everything a user can get wrong (the device, an option that differs from the run being
    resumed, a damaged training state) is checked before anything is written; the run folder is
    locked while it trains, and a failed first attempt leaves no stray folder behind.
    """
    # deferred: loads torch (`fqopt train --help` stays fast)
    from fqopt.evaluation import evaluate, resolve_device
    from fqopt.training import TrainConfig, train

    options = parse_options(data_options)
    if data_root is not None:
        options["root"] = data_root
    if samples is not None:
        if dataset != "synthderm":
            raise UserError("--samples applies to the synthderm dataset only")
        options["n"] = int(samples)
    config = config or TrainConfig(seed=seed)
    resolve_device(config.device)  # a missing GPU or a bad name fails before anything is written
    path = Path(run_dir)
    with training_session(path):
        if (path / "config.json").exists() and not force:
            run = Run.open(path)
            _check_resumable(run, dataset=dataset, options=options, model=model,
                             image_size=image_size, seed=seed, config=config)
            if init is not None and str(init) != (run.config.get("init") or {}).get("path"):
                raise UserError(f"run {path} was not started from --init {init}; pass --force "
                                "to start over")
            if not quiet:
                _ui.info(f"resuming training of {path}")
        else:
            input_config, init_info = None, None
            if init is not None:
                input_config, init_info, image_size = _check_init(init, model, image_size)
            run = Run.create(path, dataset=dataset, dataset_options=options, model=model,
                             image_size=image_size, seed=seed, force=force,
                             input_config=input_config)
            if init_info is not None:
                # deferred: loads torch (`fqopt train --help` stays fast)
                from fqopt import models

                fresh = models.init_from(run.new_model(), init, name=run.model_name)
                init_info["reinitialised"] = fresh
                run.config["init"] = init_info
                run.save_config()
                if fresh and not quiet:
                    _ui.info(f"--init: the classifier head ({', '.join(fresh)}) has another "
                             f"class count than {init}; it is re-initialised for "
                             f"{run.num_classes} classes")
        ds = run.dataset()
        if not quiet:
            _ui.info(f"[bold]train[/] {run.model_name} on {ds.name}: {len(ds)} samples, "
                     f"{ds.num_classes} classes, groups {', '.join(ds.group_names)}, "
                     f"{ds.image_size}px → {path}")
            for line in dataset_warnings(ds):
                _ui.warn(line)
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


#: run-config keys -> the option that sets them (the rest come from --data-option KEY=VALUE)
_OPTION_FLAGS = {"n": "--samples", "image_size": "--image-size", "root": "--data-root",
                 "seed": "--seed", "epochs": "--epochs", "batch_size": "--batch-size",
                 "lr": "--lr", "weight_decay": "--weight-decay", "balanced": "--balanced",
                 "patience": "--patience"}


def _flag(key: str, data_option: bool) -> str:
    if key in _OPTION_FLAGS:
        return _OPTION_FLAGS[key]
    return f"--data-option {key}" if data_option else key


def _check_resumable(run, *, dataset, options, model, image_size, seed, config) -> None:
    """A rerun of ``fqopt train`` on an unfinished run resumes it only with the options it was
    started with: a changed dataset, sample count, image size, model or training setting is a
    UserError naming the option (never silently ignored)."""
    # deferred: loads torch (`fqopt train --help` stays fast)
    from fqopt.training import config_difference, read_train_state

    path = run.path
    if run.has_model() and not run.train_state_path.exists():
        raise UserError(f"run {path} already has a trained model; pass --force to retrain")
    saved = read_train_state(run.train_state_path) if run.train_state_path.exists() else None
    if saved is not None and saved["state"].get("finished"):
        raise UserError(f"run {path} is already trained; pass --force to retrain")
    again = ("rerun with the options it was started with to resume it, or pass --force to start "
             "over")
    old_ds = run.config["dataset"]
    if dataset != old_ds["name"]:
        raise UserError(f"run {path} was started with --dataset {old_ds['name']}, not "
                        f"{dataset}; {again}")
    if (model or run.model_name) != run.model_name:
        raise UserError(f"run {path} was started with --model {run.model_name}, not {model}; "
                        f"{again}")
    wanted = Run.dataset_options(dataset, options, image_size=image_size, seed=seed)
    stored = old_ds.get("options") or {}
    for key in sorted(set(stored) | set(wanted)):
        if stored.get(key) != wanted.get(key):
            flag = _flag(key, data_option=True)
            was = f"without {flag}" if key not in stored else f"with {flag} {stored[key]!r}"
            now = (f"does not give {flag}" if key not in wanted
                   else f"gives {flag} {wanted[key]!r}")
            raise UserError(f"run {path} was started {was}, this command {now}; {again}")
    stored_train = run.config.get("train") or (saved or {}).get("config") or {}
    if stored_train:
        differ = config_difference(stored_train, asdict(config))
        if differ is not None:
            key, old, new = differ
            flag = _flag(key, data_option=False)
            raise UserError(f"run {path} was started with {flag} {old!r}, this command gives "
                            f"{flag} {new!r}; {again}")


def dataset_warnings(ds) -> list[str]:
    """Lines to warn about: a group with no samples in a split.

    A warning, not an error: the run is still usable (a small group may miss one split by
    chance of the stratified draw), but that split's figures silently leave the group out —
    worst_acc on a split without the darkest skin type is not the worst group's accuracy — so
    the user must hear it before trusting the numbers, not find it in a JSON field.
    """
    import numpy as np  # deferred: `fqopt train --help` stays fast (numpy takes 0.15 s)

    out = []
    for split, idx in ds.splits.items():
        counts = np.bincount(ds.groups[idx], minlength=ds.num_groups)
        empty = [g for g, c in zip(ds.group_names, counts) if c == 0]
        if empty:
            out.append(f"group{'s' if len(empty) > 1 else ''} {', '.join(map(repr, empty))} "
                       f"of dataset {ds.name!r} ha{'ve' if len(empty) > 1 else 's'} no samples "
                       f"in the {split} split: its figures on that split leave "
                       f"{'them' if len(empty) > 1 else 'it'} out (worst_acc too); add data "
                       "or merge groups")
    return out


def _check_init(init, model, image_size):
    """(input config, init record, image size) for ``--init``: the file must fit the
    architecture (head aside) before any run folder is written."""
    # deferred: loads torch (`fqopt train --help` stays fast)
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
    # deferred: loads torch (`fqopt train --help` stays fast)
    from fqopt.training import TrainConfig

    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         balanced=balanced, patience=patience, seed=seed, device=device)
    train_run(run_dir, dataset=dataset, model=model, image_size=image_size, samples=samples,
              data_root=data_root, data_options=data_options, seed=seed, force=force,
              config=config, fmt=fmt, init=init)
