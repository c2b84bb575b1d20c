"""Run folders: ``runs/NAME/`` holds a run's config, FP checkpoint, tables, plans and reports.

Layout::

    config.json          dataset (name + options), model (name, image size), seed, training,
                         input (normalisation, when not the dataset's), imported (checkpoint)
    model.pt             best full-precision weights (state dict, read with weights_only=True)
    train_state.pt       last epoch's training state, for resuming
    sensitivity.npz      fqopt profile
    plans/               fqopt allocate / search / refine
    reports/             FairnessReports (JSON), report.html, figures
    study.db             fqopt search (Optuna, SQLite)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

from fqopt._io import atomic_path, read_json, write_json
from fqopt._version import __version__
from fqopt.errors import UserError

RUN_SCHEMA = "fqopt.run/1"
_DATASET_CACHE: dict[str, object] = {}
#: held while a command trains a run (``fqopt train``, the training step of ``fqopt search``)
LOCK_NAME = ".train.lock"
_HELD_LOCKS: set[str] = set()


class Run:
    def __init__(self, path: str | os.PathLike, config: dict):
        self.path = Path(path)
        self.config = config

    # ------------------------------------------------------------- open/create
    @classmethod
    def create(cls, path, *, dataset: str = "synthderm", dataset_options: dict | None = None,
               model: str | None = None, image_size: int | None = None, seed: int = 0,
               force: bool = False, input_config: dict | None = None) -> "Run":
        """Write a new run's ``config.json`` (refuses an existing run unless ``force``)."""
        # deferred: torch/timm; a Run opens without them (`fqopt show`, `--help`)
        from fqopt import data, models

        path = Path(path)
        if (path / "config.json").exists() and not force:
            raise UserError(f"run folder {path} already holds a run; pass --force to start over "
                            "or choose another --out")
        if path.exists() and not path.is_dir():
            raise UserError(f"run folder {path} exists and is not a folder")
        data.DATASETS.get(dataset)
        model = model or models.DEFAULT_MODEL
        models.check_name(model)
        options = cls.dataset_options(dataset, dataset_options, image_size=image_size,
                                      seed=seed)
        config = {"schema": RUN_SCHEMA, "fqopt_version": __version__,
                  "dataset": {"name": dataset, "options": options},
                  "model": {"name": model}, "seed": int(seed), "train": {}}
        if input_config:
            config["input"] = dict(input_config)
        run = cls(path, config)
        # the dataset loads before anything is written: bad options leave no folder behind and,
        # with --force, the old run untouched
        ds = run.dataset()  # fixes num_classes and size
        run.config["model"].update(num_classes=ds.num_classes, image_size=ds.image_size)
        path.mkdir(parents=True, exist_ok=True)
        if force:
            for stale in ("model.pt", "train_state.pt", "sensitivity.npz"):
                (path / stale).unlink(missing_ok=True)
        run.save_config()
        return run

    @staticmethod
    def dataset_options(dataset: str, options: dict | None, *, image_size: int | None = None,
                        seed: int = 0) -> dict:
        """The dataset options :meth:`create` records in ``config.json`` for these arguments
        (so that a rerun can be compared with what the run was started with)."""
        options = dict(options or {})
        if image_size is not None:
            options["image_size"] = int(image_size)
        if dataset == "synthderm":
            options.setdefault("seed", int(seed))
        return options

    @classmethod
    def open(cls, path) -> "Run":
        path = Path(path)
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a run folder (no config.json); create one with "
                            f"`fqopt train --out {path}`")
        config = read_json(path / "config.json", what="run config")
        where = f"run config {path / 'config.json'}"
        if not isinstance(config, dict):
            raise UserError(f"{where} must be a JSON object")
        if config.get("schema") != RUN_SCHEMA:
            raise UserError(f"{where}: schema is {config.get('schema')!r}, expected "
                            f"{RUN_SCHEMA!r}")
        _check_config(config, where, path)
        return cls(path, config)

    def save_config(self) -> None:
        write_json(self.path / "config.json", self.config)

    # ------------------------------------------------------------------ paths
    @property
    def checkpoint_path(self) -> Path:
        return self.path / "model.pt"

    @property
    def train_state_path(self) -> Path:
        return self.path / "train_state.pt"

    @property
    def table_path(self) -> Path:
        return self.path / "sensitivity.npz"

    @property
    def plans_dir(self) -> Path:
        return self.path / "plans"

    @property
    def reports_dir(self) -> Path:
        return self.path / "reports"

    @property
    def study_path(self) -> Path:
        return self.path / "study.db"

    # ------------------------------------------------------------------ parts
    @property
    def model_name(self) -> str:
        return self.config["model"]["name"]

    @property
    def image_size(self) -> int:
        return int(self.config["model"]["image_size"])

    @property
    def num_classes(self) -> int:
        return int(self.config["model"]["num_classes"])

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    def has_model(self) -> bool:
        return self.checkpoint_path.is_file()

    def dataset(self):
        """The run's dataset (cached per process: generation/indexing happens once)."""
        # deferred: numpy; a Run opens without it (`fqopt show`, `--help`)
        from fqopt import data

        spec = self.config["dataset"]
        norm = self.config.get("input") or {}
        key = json.dumps([spec, norm], sort_keys=True)
        if key not in _DATASET_CACHE:
            _DATASET_CACHE.clear()  # keep at most one dataset in memory
            options = dict(spec.get("options", {}))
            crop = norm.get("crop_pct")
            if crop and 0 < float(crop) < 1 and options.get("image_size"):
                # timm's eval transform: the image at size / crop_pct, centre crop to size
                size = int(options["image_size"])
                inner = data.load(spec["name"], **{**options,
                                                   "image_size": round(size / float(crop))})
                ds = _center_crop(inner, size)
            else:
                ds = data.load(spec["name"], **options)
            if norm.get("mean") is not None and norm.get("std") is not None:
                # the model's own input normalisation (timm pretrained config, or given at
                # import), used by every stage that reads the run's images
                ds.mean = tuple(float(v) for v in norm["mean"])
                ds.std = tuple(float(v) for v in norm["std"])
            _DATASET_CACHE[key] = ds
        return _DATASET_CACHE[key]

    def new_model(self):
        """The run's architecture with fresh random weights."""
        # deferred: torch/timm; a Run opens without them (`fqopt show`, `--help`)
        from fqopt import models

        return models.create(self.model_name, self.num_classes, image_size=self.image_size)

    def model(self):
        """The trained full-precision model, in eval mode."""
        if not self.has_model():
            raise UserError(f"run {self.path} has no trained model ({self.checkpoint_path} is "
                            f"missing); run `fqopt train --out {self.path}` first")
        # deferred: torch/timm; a Run opens without them (`fqopt show`, `--help`)
        from fqopt import models

        m = self.new_model()
        models.load_weights(m, self.checkpoint_path, name=self.model_name)
        return m.eval()

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, model={self.model_name!r})"


#: what every command reads from a run's config.json: (section, key, type)
_CONFIG_FIELDS = (("dataset", "name", str), ("model", "name", str),
                  ("model", "num_classes", int), ("model", "image_size", int))


def _check_config(config: dict, where: str, path) -> None:
    """A UserError naming the first missing or mistyped field of a run's config.json."""
    hint = (f"the file was edited or damaged; restore it, or start the run over with "
            f"`fqopt train --out {path} --force`")
    for section, key, kind in _CONFIG_FIELDS:
        part = config.get(section)
        if not isinstance(part, dict):
            raise UserError(f"{where} has no {section!r} object; {hint}")
        value = part.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            got = "is missing" if key not in part else f"is {value!r}"
            raise UserError(f"{where}: {section}.{key} {got}, expected "
                            f"{'a string' if kind is str else 'an integer'}; {hint}")
    options = config["dataset"].get("options", {})
    if not isinstance(options, dict):
        raise UserError(f"{where}: dataset.options must be a JSON object; {hint}")


# ------------------------------------------------------------------------- training lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


@contextlib.contextmanager
def train_lock(path):
    """Hold ``RUN/.train.lock`` (created with ``O_EXCL``, holding ``pid host``) for the block.

    A second process that trains the same run folder gets a UserError naming the holder. A lock
    left by a process that died (same host, pid gone) is stale and taken over. Re-entrant within
    one process (``fqopt search`` trains through the same code as ``fqopt train``).
    """
    path = Path(path)
    lock = path / LOCK_NAME
    key = str(lock.resolve())
    if key in _HELD_LOCKS:
        yield lock
        return
    path.mkdir(parents=True, exist_ok=True)
    me = f"{os.getpid()} {socket.gethostname()}"
    for attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid_text, _, host = lock.read_text().strip().partition(" ")
                pid = int(pid_text)
            except (OSError, ValueError):
                pid, host = None, ""
            stale = pid is not None and host == socket.gethostname() and not _pid_alive(pid)
            if stale and attempt == 0:
                lock.unlink(missing_ok=True)  # its process is gone: take the run over
                continue
            holder = f"process {pid} on {host}" if pid is not None else "another process"
            raise UserError(f"run {path} is being trained by {holder} (lock file {lock}); wait "
                            "for it to finish, or delete the lock file if no fqopt is "
                            "running there") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(me)
        break
    _HELD_LOCKS.add(key)
    try:
        yield lock
    finally:
        _HELD_LOCKS.discard(key)
        with contextlib.suppress(OSError):
            if lock.read_text().strip() == me:
                lock.unlink()


def _first_missing(path: Path) -> Path | None:
    """The topmost folder of ``path`` (itself included) that does not exist yet."""
    top = None
    for p in (path, *path.parents):
        if p.exists():
            break
        top = p
    return top


#: files that make a run folder worth keeping after a failed command
_VALUABLE = ("model.pt", "train_state.pt", "sensitivity.npz", "study.db", "plans", "tables",
             "refined", "exports")


@contextlib.contextmanager
def training_session(path):
    """Lock the run folder ``path`` for training; if the block fails, remove what this command
    created and that holds nothing of value.

    A failed or interrupted first ``fqopt train`` leaves no stray folder behind (a folder that
    did not exist before, holding only a config.json, is removed; a config.json written into an
    existing folder is removed); a run with a model or a training state to resume from is kept.
    """
    path = Path(path)
    created = _first_missing(path.resolve())
    had_config = (path / "config.json").exists()
    with train_lock(path):
        try:
            yield path
        except BaseException:
            if not any((path / name).exists() for name in _VALUABLE):
                if created is not None:
                    shutil.rmtree(path, ignore_errors=True)
                    # parents this command created go too, if nothing else went into them
                    for parent in path.resolve().parents:
                        if created not in (parent, *parent.parents):
                            break
                        with contextlib.suppress(OSError):
                            parent.rmdir()
                elif not had_config:
                    (path / "config.json").unlink(missing_ok=True)
            raise


def _center_crop(inner, size: int):
    """``inner`` (decoded at a larger size) seen through a centred ``size`` x ``size`` window;
    every attribute but the images is the inner dataset's."""
    # deferred: numpy; a Run opens without it (`fqopt show`, `--help`)
    from fqopt.data import FairDataset

    class CenterCropped(FairDataset):
        def load_images(self, indices):
            imgs = inner.load_images(indices)
            top = (imgs.shape[1] - size) // 2
            left = (imgs.shape[2] - size) // 2
            return imgs[:, top:top + size, left:left + size]

    ds = CenterCropped(name=inner.name, class_names=inner.class_names,
                       group_names=inner.group_names, labels=inner.labels, groups=inner.groups,
                       image_size=size, attribute=inner.attribute, splits=inner.splits,
                       info={**inner.info, "crop": f"centre {size} of {inner.image_size}"})
    ds.mean, ds.std = inner.mean, inner.std
    return ds


def import_checkpoint(path, *, model: str, checkpoint, dataset: str = "synthderm",
                      dataset_options: dict | None = None, image_size: int | None = None,
                      mean=None, std=None, seed: int = 0, force: bool = False) -> "Run":
    """A run folder from a trained checkpoint, without training (``fqopt import``).

    checkpoint: a timm state dict in ``.pt``/``.pth`` (read with ``weights_only=True``) or
    ``.safetensors``; ``state_dict``/``model`` wrappers and ``module.`` prefixes are handled.
    The class count is read from the checkpoint's head and must equal the dataset's. Every
    check runs before anything is written: a checkpoint of another architecture (naming the
    first mismatching tensor) or class count is a UserError and leaves no folder behind.
    mean/std: the input normalisation the model was trained with (default: the dataset's).
    Writes ``config.json``, ``model.pt`` and ``reports/fp_test.json`` (the FP32 test figures).
    """
    # deferred: torch/timm; a Run opens without them (`fqopt show`, `--help`)
    import torch
    from fqopt import data, models
    from fqopt.evaluation import evaluate

    path = Path(path)
    if (path / "config.json").exists() and not force:
        raise UserError(f"run folder {path} already holds a run; pass --force to replace it "
                        "or choose another --out")
    models.check_name(model)
    where = f"checkpoint {checkpoint}"
    state = models.strip_prefixes(models.read_state_dict(checkpoint))
    classes = models.checkpoint_classes(model, state, where)
    options = dict(dataset_options or {})
    if image_size is not None:
        options["image_size"] = int(image_size)
    if dataset == "synthderm":
        options.setdefault("seed", int(seed))
    data.DATASETS.get(dataset)
    ds = data.load(dataset, **options)
    if classes != ds.num_classes:
        raise UserError(f"{where} has a {classes}-class head but dataset {dataset!r} has "
                        f"{ds.num_classes} classes ({', '.join(ds.class_names[:6])}"
                        f"{', ...' if ds.num_classes > 6 else ''})")
    net = models.create(model, classes, image_size=ds.image_size)
    models.load_weights(net, state, name=model)  # names the first mismatching tensor
    norm = None
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise UserError("give both --mean and --std (or neither)")
        norm = {"mean": _triple(mean, "mean"), "std": _triple(std, "std"),
                "source": "given at import"}
        if any(v <= 0 for v in norm["std"]):
            raise UserError(f"--std must be positive, got {norm['std']}")
    run = Run.create(path, dataset=dataset, dataset_options=options, model=model,
                     image_size=ds.image_size, seed=seed, force=force, input_config=norm)
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    run.config["imported"] = {"checkpoint": str(Path(checkpoint).resolve()),
                              "sha256": digest, "num_classes": classes}
    run.save_config()
    with atomic_path(run.checkpoint_path) as tmp:
        torch.save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, tmp)
    rep = evaluate(run.model(), run.dataset(), "test")
    run.reports_dir.mkdir(parents=True, exist_ok=True)
    rep.save(run.reports_dir / "fp_test.json")
    return run


def _triple(v, what: str) -> list[float]:
    if isinstance(v, str):
        v = v.split(",")
    try:
        out = [float(x) for x in v]
    except (TypeError, ValueError):
        raise UserError(f"--{what} must be three numbers such as 0.485,0.456,0.406, "
                        f"got {v!r}") from None
    if len(out) == 1:
        out = out * 3
    if len(out) != 3:
        raise UserError(f"--{what} must be one or three numbers, got {len(out)}")
    return out
