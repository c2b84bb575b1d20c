"""Datasets: the embedded ``synthderm`` generator and loaders for real-format data.

``fqopt.data.load(name, **options) -> FairDataset``. Loaders are looked up in a registry
(:data:`DATASETS`) of ``name -> "module:function"`` and imported on first use.
"""

from __future__ import annotations

import importlib
import inspect

import numpy as np

from fqopt._registry import Registry
from fqopt.data._base import (SPLITS, FairDataset, iter_batches, stratified_split)
from fqopt.errors import UserError

#: ``name -> "package.module:function"``: loaders are imported when first loaded
DATASETS: Registry[str] = Registry("dataset")

__all__ = ["DATASETS", "FairDataset", "SPLITS", "available", "iter_batches", "load",
           "register_dataset", "stratified_split"]


def available() -> list[str]:
    return DATASETS.names()


def register_dataset(name: str, target: str, *, replace: bool = False) -> None:
    """Register a loader ``"package.module:function"`` under ``name``."""
    DATASETS.register(name, target, replace=replace)


register_dataset("synthderm", "fqopt.data._synthderm:load_synthderm")
register_dataset("fitzpatrick17k", "fqopt.data._fitzpatrick:load_fitzpatrick17k")
register_dataset("isic2019", "fqopt.data._isic:load_isic2019")
register_dataset("csv", "fqopt.data._csv:load_csv")


def load(name: str = "synthderm", **options) -> FairDataset:
    """Load dataset ``name`` with loader-specific ``options`` (``root``, ``image_size``, ...)."""
    module, func = DATASETS.get(name).split(":")
    loader = getattr(importlib.import_module(module), func)
    params = inspect.signature(loader).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in options if k not in params]
        if unknown:
            valid = [k for k, p in params.items() if p.kind is not p.VAR_POSITIONAL]
            raise UserError(f"dataset {name!r} has no option {unknown[0]!r}; its options are "
                            f"{', '.join(valid)}")
    return check_classes(loader(**options))


def check_classes(ds: FairDataset) -> FairDataset:
    """A dataset whose samples all have one label cannot train or evaluate a classifier (its
    accuracy is 1 by construction): a UserError naming the file and the label column."""
    present = sorted(set(np.unique(ds.labels).tolist())) if len(ds) else []
    if len(present) < 2:
        info = ds.info or {}
        where = f" ({info['csv']})" if info.get("csv") else ""
        column = (info.get("columns") or {}).get("label") or info.get("target")
        what = f"column {column!r}" if column else "its labels"
        only = (f"only class {ds.class_names[present[0]]!r}" if present else "no samples")
        raise UserError(f"dataset {ds.name!r}{where}: {what} has {only} after filtering "
                        f"({len(ds)} samples); a classifier needs at least two classes")
    return ds
