"""Fitzpatrick17k: ``fitzpatrick17k.csv`` + a folder of ``<md5hash>.jpg`` images.

Both published CSV schemas are read:

- current: ``md5hash, fitzpatrick_scale, fitzpatrick_centaur, label, nine_partition_label,
  three_partition_label, qc, url, url_alphanum``;
- older (FairPrune / FairQuantize / FairQuant archives): a leading unnamed index column and
  ``fitzpatrick`` instead of ``fitzpatrick_scale``.

The skin type (1-6, or -1 for unknown) is the sensitive attribute, grouped by ``grouping``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fqopt.data._base import DEFAULT_FRACTIONS, stratified_split
from fqopt.data._files import (RESIZE_POLICY, FileDataset, RowFilter, check_choice,
                               check_fractions, check_ids, check_image_size, check_seed,
                               default_folder, drop_missing_images, find_images, index_of,
                               parse_numbers, read_csv, resolve_image_folder, sorted_names)
from fqopt.errors import UserError

NAME = "fitzpatrick17k"
CSV_NAME = "fitzpatrick17k.csv"
#: image folders tried under ``root``, in order
IMAGE_FOLDERS = ("images", "data")
TARGETS = ("three_partition_label", "nine_partition_label", "label")
#: skin-type column of the current schema, then of the older one
SKIN_COLUMNS = ("fitzpatrick_scale", "fitzpatrick")
UNKNOWN = "unknown"


@dataclass(frozen=True)
class SkinGrouping:
    """Groups of Fitzpatrick types: ``of_type[t - 1]`` is the group index of type ``t``."""

    names: tuple[str, ...]
    of_type: tuple[int, ...]
    description: str


GROUPINGS: dict[str, SkinGrouping] = {
    "type6": SkinGrouping(("I", "II", "III", "IV", "V", "VI"), (0, 1, 2, 3, 4, 5),
                          "one group per Fitzpatrick type"),
    "light_dark": SkinGrouping(("light(I-III)", "dark(IV-VI)"), (0, 0, 0, 1, 1, 1),
                               "types 1-3 light, 4-6 dark"),
    "pairs": SkinGrouping(("I-II", "III-IV", "V-VI"), (0, 0, 1, 1, 2, 2),
                          "types 1-2, 3-4, 5-6"),
}


def load_fitzpatrick17k(root: str | os.PathLike | None = None, *,
                        csv: str | os.PathLike | None = None,
                        images: str | os.PathLike | None = None,
                        target: str = "three_partition_label", grouping: str = "type6",
                        keep_unknown: bool = False, image_size: int = 224, seed: int = 4242,
                        fractions=DEFAULT_FRACTIONS, cache: bool | int | None = None,
                        workers: int | None = None) -> FileDataset:
    """Load Fitzpatrick17k from ``root`` (or an explicit ``csv`` and ``images`` folder).

    Paths: ``csv`` defaults to ``root/fitzpatrick17k.csv``; ``images`` to ``root/images``, or
    ``root/data`` if only that exists; without ``root``, the CSV's folder is the root.

    ``target``: ``three_partition_label`` (benign / malignant / non-neoplastic),
    ``nine_partition_label`` or ``label`` (the 114 conditions). Class names are the distinct
    values of that column over *all* CSV rows, sorted alphabetically, so the class list does
    not depend on which images are present (``info['empty_classes']`` lists classes left
    without samples).

    ``grouping``: ``type6`` (I..VI), ``light_dark`` (``light(I-III)``/``dark(IV-VI)``) or
    ``pairs`` (``I-II``/``III-IV``/``V-VI``). Rows of unknown skin type (-1) are left out
    (counted in ``info['dropped']['unknown_skin_type']`` and warned about) unless
    ``keep_unknown``, which adds a last group ``unknown``.

    Rows whose ``<md5hash>.jpg`` is not in the image folder are left out, counted and named in
    ``info['missing_images']`` and announced with a :class:`~fqopt.data._files.DataWarning`.

    Splits: ``train``/``search``/``test`` by ``fractions``, stratified by label x group with
    ``seed`` (:func:`~fqopt.data.stratified_split`); rows repeating an ``md5hash`` (the same
    image) are kept in one split.
    """
    check_choice(target, TARGETS, option="target", dataset=NAME)
    check_choice(grouping, GROUPINGS, option="grouping", dataset=NAME)
    image_size = check_image_size(image_size)
    seed = check_seed(seed)
    fractions = check_fractions(fractions)
    if csv is None and root is None:
        raise UserError(f"{NAME}: give root= (a folder holding {CSV_NAME} and images/) or csv=")
    root = Path(root) if root is not None else Path(csv).parent
    csv_path = Path(csv) if csv is not None else root / CSV_NAME
    image_dir = Path(images) if images is not None else default_folder(root, IMAGE_FOLDERS)

    what = "Fitzpatrick17k CSV"
    expected = ["md5hash", "fitzpatrick_scale (or fitzpatrick)", *TARGETS]
    table = read_csv(csv_path, what=what, required=["md5hash"], expected=expected)
    skin_col = next((c for c in SKIN_COLUMNS if table.has(c)), None)
    if skin_col is None:
        raise UserError(f"{what} {csv_path} has no column 'fitzpatrick_scale' (current "
                        f"schema) or 'fitzpatrick' (older schema); expected columns "
                        f"{', '.join(expected)}; found {', '.join(table.header)}")
    if not table.has(target):
        raise UserError(f"{what} {csv_path} has no column {target!r} (the target); expected "
                        f"columns {', '.join(expected)}; found {', '.join(table.header)}")
    image_dir = resolve_image_folder(image_dir, what=NAME)

    ids = check_ids(table, "md5hash", what=what, unique=False)
    skin = parse_numbers(table, skin_col, what=what,
                         expected="a Fitzpatrick type 1-6, or -1 for unknown")
    bad = np.flatnonzero(~np.isin(skin, [-1, 1, 2, 3, 4, 5, 6]))
    if len(bad):
        i = bad[0]
        raise UserError(f"{what} {csv_path} column {skin_col!r} line {table.line(i)}: "
                        f"{table.col(skin_col)[i]!r} is not a Fitzpatrick type 1-6, or -1 for "
                        f"unknown")
    skin = skin.astype(np.int64)
    values = table.col(target)
    class_names = sorted_names(values)

    rows = RowFilter(NAME, ids)
    rows.drop("empty_target", np.array([v == "" for v in values]),
              because=f"with an empty {target}", where=f"{csv_path}")
    unknown = skin == -1
    if not keep_unknown:
        rows.drop("unknown_skin_type", unknown, because="of unknown skin type",
                  where=f"{skin_col} = -1 in {csv_path}", hint="pass keep_unknown=True to keep "
                  "them as group 'unknown'")
    paths = find_images(image_dir, ids)
    missing = drop_missing_images(rows, paths, image_dir)
    kept = rows.kept()

    spec = GROUPINGS[grouping]
    group_names = list(spec.names) + ([UNKNOWN] if keep_unknown else [])
    lookup = np.array([len(spec.names), *spec.of_type], dtype=np.int64)  # type -1 -> index 0
    groups = lookup[np.where(skin[kept] == -1, 0, skin[kept])]
    labels = index_of([values[i] for i in kept], class_names)
    kept_ids = [ids[i] for i in kept]
    repeated = len(kept_ids) - len(set(kept_ids))
    splits = stratified_split(labels, groups, fractions=fractions, seed=seed,
                              cluster_ids=np.array(kept_ids) if repeated else None)

    info = {
        "csv": str(csv_path), "images": str(image_dir),
        "schema": "current" if skin_col == "fitzpatrick_scale" else "older",
        "skin_type_column": skin_col, "target": target,
        "grouping": {"name": grouping, "rule": spec.description,
                     "unknown": "kept as group 'unknown'" if keep_unknown else "left out",
                     "unknown_rows": int(unknown.sum())},
        **rows.info(), "missing_images": missing,
        "repeated_md5hash": repeated,
        "empty_classes": [c for k, c in enumerate(class_names)
                          if not np.any(labels == k)],
        "split": {"rule": "stratified by label x group"
                  + (", repeated md5hash kept together" if repeated else ""),
                  "seed": seed, "fractions": [float(f) for f in fractions]},
        "resize": RESIZE_POLICY,
    }
    return FileDataset([paths[i] for i in kept], ids=kept_ids, cache=cache, workers=workers,
                       name=NAME, class_names=class_names, group_names=group_names,
                       labels=labels, groups=groups, image_size=image_size,
                       attribute="skin_type", splits=splits, info=info)
