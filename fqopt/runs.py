"""Run folders: ``runs/NAME/`` holds a run's config, FP checkpoint, tables, plans and reports.

Layout::

    config.json          dataset (name + options), model (name, image size), seed, training
    model.pt             best full-precision weights (state dict, read with weights_only=True)
    train_state.pt       last epoch's training state, for resuming
    sensitivity.npz      fqopt profile
    plans/               fqopt allocate / search / refine
    reports/             FairnessReports (JSON), report.html, figures
    study.db             fqopt search (Optuna, SQLite)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fqopt._io import read_json, write_json
from fqopt._version import __version__
from fqopt.errors import UserError

RUN_SCHEMA = "fqopt.run/1"
_DATASET_CACHE: dict[str, object] = {}


class Run:
    def __init__(self, path: str | os.PathLike, config: dict):
        self.path = Path(path)
        self.config = config

    # ------------------------------------------------------------- open/create
    @classmethod
    def create(cls, path, *, dataset: str = "synthderm", dataset_options: dict | None = None,
               model: str | None = None, image_size: int | None = None, seed: int = 0,
               force: bool = False) -> "Run":
        """Write a new run's ``config.json`` (refuses an existing run unless ``force``)."""
        from fqopt import data, models

        path = Path(path)
        if (path / "config.json").exists() and not force:
            raise UserError(f"run folder {path} already holds a run; pass --force to start over "
                            "or choose another --out")
        if path.exists() and not path.is_dir():
            raise UserError(f"run folder {path} exists and is not a folder")
        if dataset not in data.available():
            raise UserError(f"unknown dataset {dataset!r}; available: "
                            f"{', '.join(data.available())}")
        model = model or models.DEFAULT_MODEL
        models.check_name(model)
        options = dict(dataset_options or {})
        if image_size is not None:
            options["image_size"] = int(image_size)
        if dataset == "synthderm":
            options.setdefault("seed", int(seed))
        config = {"schema": RUN_SCHEMA, "fqopt_version": __version__,
                  "dataset": {"name": dataset, "options": options},
                  "model": {"name": model}, "seed": int(seed), "train": {}}
        path.mkdir(parents=True, exist_ok=True)
        if force:
            for stale in ("model.pt", "train_state.pt", "sensitivity.npz"):
                (path / stale).unlink(missing_ok=True)
        run = cls(path, config)
        ds = run.dataset()  # fail early on bad dataset options; fixes num_classes and size
        run.config["model"].update(num_classes=ds.num_classes, image_size=ds.image_size)
        run.save_config()
        return run

    @classmethod
    def open(cls, path) -> "Run":
        path = Path(path)
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a run folder (no config.json); create one with "
                            f"`fqopt train --out {path}`")
        config = read_json(path / "config.json", what="run config")
        if config.get("schema") != RUN_SCHEMA:
            raise UserError(f"run config {path / 'config.json'}: schema is "
                            f"{config.get('schema')!r}, expected {RUN_SCHEMA!r}")
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
        from fqopt import data

        spec = self.config["dataset"]
        key = json.dumps(spec, sort_keys=True)
        if key not in _DATASET_CACHE:
            _DATASET_CACHE.clear()  # keep at most one dataset in memory
            _DATASET_CACHE[key] = data.load(spec["name"], **spec.get("options", {}))
        return _DATASET_CACHE[key]

    def new_model(self):
        """The run's architecture with fresh random weights."""
        from fqopt import models

        return models.create(self.model_name, self.num_classes, image_size=self.image_size)

    def model(self):
        """The trained full-precision model, in eval mode."""
        if not self.has_model():
            raise UserError(f"run {self.path} has no trained model ({self.checkpoint_path} is "
                            f"missing); run `fqopt train --out {self.path}` first")
        from fqopt import models

        m = self.new_model()
        models.load_weights(m, self.checkpoint_path, name=self.model_name)
        return m.eval()

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, model={self.model_name!r})"
