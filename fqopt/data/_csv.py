"""Any folder of images with a CSV of image path, label and group columns."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fqopt.data._base import DEFAULT_FRACTIONS, SPLITS, stratified_split
from fqopt.data._files import (RESIZE_POLICY, FileDataset, RowFilter, check_fractions,
                               check_ids, check_image_size, check_seed, drop_missing_images,
                               index_of, read_csv, remap_splits, resolve_image_folder,
                               sorted_names)
from fqopt.errors import UserError

NAME = "csv"


def load_csv(csv: str | os.PathLike | None = None, root: str | os.PathLike | None = None, *,
             path_column: str = "path", label_column: str = "label",
             group_column: str = "group", split_column: str | None = None,
             attribute: str | None = None, name: str = NAME, image_size: int = 224,
             seed: int = 4242, fractions=DEFAULT_FRACTIONS, cache: bool | int | None = None,
             workers: int | None = None) -> FileDataset:
    """Load images listed in ``csv``: one row per image with a path, a label and a group.

    Paths are relative to ``root`` (default: the CSV's folder); absolute paths are used as
    they are. Labels and groups may be strings or integers: the names are the distinct values
    over all CSV rows, in numeric order if every value is an integer (``"2"`` before ``"10"``),
    else sorted as text; label/group index ``k`` is the ``k``-th name. Rows with an empty
    label or group, or whose image file is missing, are left out, counted in ``info`` and
    warned about.

    Splits: stratified by label x group with ``seed`` and ``fractions``, or, with
    ``split_column``, taken from that column (values ``train``, ``search``, ``test``).
    ``attribute`` names the sensitive attribute in reports (default: ``group_column``).
    """
    image_size = check_image_size(image_size)
    seed = check_seed(seed)
    fractions = check_fractions(fractions)
    if csv is None:
        raise UserError("the csv dataset needs csv=<file> (columns: path, label, group)")
    csv_path = Path(csv)
    what = f"{name} CSV"
    required = [path_column, label_column, group_column]
    if split_column is not None:
        required.append(split_column)
    table = read_csv(csv_path, what=what, required=required)
    root = resolve_image_folder(root if root is not None else csv_path.parent, what=name)

    rel = check_ids(table, path_column, what=what, unique=False)
    labels_raw = table.col(label_column)
    groups_raw = table.col(group_column)
    class_names = sorted_names(labels_raw)
    group_names = sorted_names(groups_raw)

    rows = RowFilter(name, rel)
    rows.drop("empty_label", np.array([v == "" for v in labels_raw]),
              because=f"with an empty {label_column}", where=str(csv_path))
    rows.drop("empty_group", np.array([v == "" for v in groups_raw]),
              because=f"with an empty {group_column}", where=str(csv_path))
    full = [root / p for p in rel]  # an absolute p replaces root
    paths = [str(p) if p.is_file() else None for p in full]
    missing = drop_missing_images(rows, paths, root)
    kept = rows.kept()

    labels = index_of([labels_raw[i] for i in kept], class_names)
    groups = index_of([groups_raw[i] for i in kept], group_names)
    if split_column is None:
        splits = stratified_split(labels, groups, fractions=fractions, seed=seed)
        split_info = {"rule": "stratified by label x group", "seed": seed,
                      "fractions": list(fractions)}
    else:
        col = table.col(split_column)
        for i, v in enumerate(col):
            if v not in SPLITS:
                raise UserError(f"{what} {csv_path} column {split_column!r} line "
                                f"{table.line(i)}: {v!r} is not one of {', '.join(SPLITS)}")
        splits = remap_splits({s: np.flatnonzero([v == s for v in col]) for s in SPLITS}, kept)
        split_info = {"rule": f"from column {split_column!r}"}

    info = {"csv": str(csv_path), "root": str(root), "columns": {
                "path": path_column, "label": label_column, "group": group_column,
                "split": split_column},
            **rows.info(), "missing_images": missing, "split": split_info,
            "empty_classes": [c for k, c in enumerate(class_names) if not np.any(labels == k)],
            "resize": RESIZE_POLICY}
    return FileDataset([paths[i] for i in kept], ids=[rel[i] for i in kept], cache=cache,
                       workers=workers, name=name, class_names=class_names,
                       group_names=group_names, labels=labels, groups=groups,
                       image_size=image_size, attribute=attribute or group_column,
                       splits=splits, info=info)
