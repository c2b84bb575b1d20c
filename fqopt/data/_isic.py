"""ISIC 2019 (training part): ground truth + metadata CSVs and ``ISIC_2019_Training_Input/``.

- ``ISIC_2019_Training_GroundTruth.csv``: ``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK``, one-hot
  floats ``0.0``/``1.0``. UNK is never 1 in the training set, so there are 8 classes, in the
  column order ``MEL, NV, BCC, AK, BKL, DF, VASC, SCC`` (label k = k-th column, as every ISIC
  pipeline indexes them).
- ``ISIC_2019_Training_Metadata.csv``: ``image,age_approx,anatom_site_general,lesion_id,sex``.
- images ``ISIC_2019_Training_Input/<image>.jpg`` (``<image>`` may end in ``_downsampled``; the
  suffix is part of the file name).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fqopt.data._base import DEFAULT_FRACTIONS, SPLITS, stratified_split
from fqopt.data._files import (RESIZE_POLICY, CsvTable, FileDataset, RowFilter, check_choice,
                               check_fractions, check_ids, check_image_size, check_seed,
                               drop_missing_images, find_images, parse_numbers, read_csv,
                               remap_splits, resolve_image_folder)
from fqopt.errors import UserError

NAME = "isic2019"
GROUND_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
METADATA = "ISIC_2019_Training_Metadata.csv"
IMAGE_FOLDER = "ISIC_2019_Training_Input"
CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
UNKNOWN_CLASS = "UNK"
META_COLUMNS = ("image", "age_approx", "anatom_site_general", "lesion_id", "sex")
SEXES = ("female", "male")  # female = 0, male = 1, as FairQuant codes them
SPLIT_RULES = ("lesion", "image")


@dataclass(frozen=True)
class AgeRule:
    """Two age groups around a threshold T: group 0 where ``age <op_young> T``, else group 1."""

    young: str
    old: str

    def is_young(self, age: np.ndarray, threshold: float) -> np.ndarray:
        return age <= threshold if self.young == "<=" else age < threshold

    def names(self, threshold: float) -> tuple[str, str]:
        return f"{self.young}{threshold:g}", f"{self.old}{threshold:g}"


#: the rule names the comparison of the younger group (``le``: age <= T) or, as an alias,
#: of the older one (``gt``: age > T, the same partition as ``le``)
AGE_RULES = {"le": AgeRule("<=", ">"), "lt": AgeRule("<", ">=")}
AGE_RULE_ALIASES = {"gt": "le", "ge": "lt"}


@dataclass
class _Attribute:
    """Group of each ground-truth row (-1 where unknown), the group names, and what was done."""

    names: list[str]
    groups: np.ndarray
    unknown: np.ndarray
    column: str
    info: dict


def _sex(meta: CsvTable, rows: np.ndarray, **_) -> _Attribute:
    col = meta.col("sex")
    groups = np.full(len(rows), -1, dtype=np.int64)
    unknown = np.zeros(len(rows), dtype=bool)
    for i, m in enumerate(rows):
        if m < 0:
            continue
        v = col[m].lower()
        if v == "":
            unknown[i] = True
        elif v in SEXES:
            groups[i] = SEXES.index(v)
        else:
            raise UserError(f"ISIC metadata {meta.path} column 'sex' line {meta.line(m)}: "
                            f"{col[m]!r} is not female, male or empty")
    return _Attribute(list(SEXES), groups, unknown, "sex",
                      {"attribute": "sex", "rule": "female = 0, male = 1; empty sex left out"})


def _age(meta: CsvTable, rows: np.ndarray, *, threshold: float, rule: str) -> _Attribute:
    ages = parse_numbers(meta, "age_approx", what="ISIC metadata", allow_empty=True,
                         expected="an age in years, or empty")
    spec = AGE_RULES[AGE_RULE_ALIASES.get(rule, rule)]
    age = np.append(ages, np.nan)[rows]  # row -1 (no metadata) -> the appended NaN
    unknown = (rows >= 0) & np.isnan(age)
    groups = np.where(np.isnan(age), -1, np.where(spec.is_young(age, threshold), 0, 1))
    young, old = spec.names(threshold)
    return _Attribute([young, old], groups.astype(np.int64), unknown, "age_approx",
                      {"attribute": "age", "threshold": threshold, "rule": rule,
                       "groups": {young: f"age_approx {spec.young} {threshold:g}",
                                  old: f"age_approx {spec.old} {threshold:g}"},
                       "unknown": "empty age_approx left out"})


ATTRIBUTES = {"sex": _sex, "age": _age}


def fairquant_image_split(n: int, *, seed: int, fractions) -> dict[str, np.ndarray]:
    """FairQuant's ISIC split over ``n`` rows (positions ``0..n-1`` in ground-truth order).

    FairQuant shuffles its list of rows with ``random.Random(seed).shuffle`` (seed 42), trains
    on the first 60 % and evaluates on the next 20 %; the last 20 % is unused. Here the middle
    block (``fractions[2]`` of the rows) is ``test``, the first (``fractions[0]``) ``train`` and
    the last block ``search``. Cut points are ``int(fraction x n)`` as in FairQuant.
    """
    order = list(range(n))
    random.Random(seed).shuffle(order)
    cut1 = int(fractions[0] * n)
    cut2 = int((fractions[0] + fractions[2]) * n)
    parts = {"train": order[:cut1], "test": order[cut1:cut2], "search": order[cut2:]}
    return {k: np.sort(np.array(parts[k], dtype=np.int64)) for k in SPLITS}


def load_isic2019(root: str | os.PathLike | None = None, *,
                  ground_truth: str | os.PathLike | None = None,
                  metadata: str | os.PathLike | None = None,
                  images: str | os.PathLike | None = None,
                  attribute: str = "sex", age_threshold: float = 60, age_rule: str = "le",
                  split: str = "lesion", image_size: int = 224, seed: int = 42,
                  fractions=DEFAULT_FRACTIONS, cache: bool | int | None = None,
                  workers: int | None = None) -> FileDataset:
    """Load the ISIC 2019 training set with sex or age as the sensitive attribute.

    Paths: ``root`` holds ``ISIC_2019_Training_GroundTruth.csv``,
    ``ISIC_2019_Training_Metadata.csv`` and ``ISIC_2019_Training_Input/``; each can be given
    explicitly instead (without ``root``, the ground-truth file's folder is the root).

    Ground truth: each row must have exactly one ``1`` among the class columns (and ``UNK``),
    else :class:`UserError` naming the line: the file is one-hot by definition, and guessing a
    label for a corrupted row would be silent. Rows whose ``UNK`` is 1 are left out and counted.
    Ground-truth rows without a metadata row are left out and counted; metadata rows without
    ground truth are ignored (``info['metadata_only']``).

    ``attribute``: ``sex`` (groups ``female``, ``male``; empty sex left out, counted) or ``age``
    (two groups around ``age_threshold``; ``age_rule`` ``le``: ``<=60`` / ``>60`` (default),
    ``lt``: ``<60`` / ``>=60``; ``gt`` and ``ge`` name the older group and are aliases of
    ``le`` and ``lt``; the younger group is always group 0; empty age left out, counted).

    ``split``: ``lesion`` (default): stratified by label x group with all images of one
    ``lesion_id`` in one split (an empty lesion_id is its own lesion); ``image``: FairQuant's
    image-level split for replication (:func:`fairquant_image_split`; it puts images of one
    lesion on both sides, counted in ``info['split']['lesions_in_several_splits']``). For the
    ``image`` split the shuffle runs over every ground-truth row whose image exists, as in
    FairQuant, before rows of unknown sex/age or UNK are left out, so each kept image lands in
    the split it has there.
    """
    check_choice(attribute, ATTRIBUTES, option="attribute", dataset=NAME)
    check_choice(age_rule, [*AGE_RULES, *AGE_RULE_ALIASES], option="age_rule", dataset=NAME)
    check_choice(split, SPLIT_RULES, option="split", dataset=NAME)
    image_size = check_image_size(image_size)
    seed = check_seed(seed)
    fractions = check_fractions(fractions)
    try:
        age_threshold = float(age_threshold)
    except (TypeError, ValueError):
        raise UserError(f"{NAME}: age_threshold must be a number of years, "
                        f"got {age_threshold!r}") from None
    if ground_truth is None and root is None:
        raise UserError(f"{NAME}: give root= (a folder holding {GROUND_TRUTH}, {METADATA} and "
                        f"{IMAGE_FOLDER}/) or ground_truth=, metadata= and images=")
    root = Path(root) if root is not None else Path(ground_truth).parent
    gt_path = Path(ground_truth) if ground_truth is not None else root / GROUND_TRUTH
    meta_path = Path(metadata) if metadata is not None else root / METADATA
    image_dir = Path(images) if images is not None else root / IMAGE_FOLDER

    gt_what = "ISIC ground truth"
    gt = read_csv(gt_path, what=gt_what, required=["image", *CLASSES],
                  expected=["image", *CLASSES, UNKNOWN_CLASS])
    attr_col = "sex" if attribute == "sex" else "age_approx"
    needed = ["image", attr_col] + (["lesion_id"] if split == "lesion" else [])
    meta = read_csv(meta_path, what="ISIC metadata", required=needed, expected=META_COLUMNS)
    image_dir = resolve_image_folder(image_dir, what=NAME)

    ids = check_ids(gt, "image", what=gt_what, unique=True)
    columns = [*CLASSES] + ([UNKNOWN_CLASS] if gt.has(UNKNOWN_CLASS) else [])
    onehot = np.stack([parse_numbers(gt, c, what=gt_what, expected="0.0 or 1.0")
                       for c in columns], axis=1)
    bad_value = np.argwhere((onehot != 0) & (onehot != 1))
    if len(bad_value):
        i, j = bad_value[0]
        raise UserError(f"{gt_what} {gt_path} column {columns[j]!r} line {gt.line(i)}: "
                        f"{gt.col(columns[j])[i]!r} is not 0.0 or 1.0")
    positives = onehot.sum(axis=1)
    bad_rows = np.flatnonzero(positives != 1)
    if len(bad_rows):
        i = bad_rows[0]
        raise UserError(f"{gt_what} {gt_path} line {gt.line(i)} (image {ids[i]}): expected "
                        f"exactly one 1.0 among {','.join(columns)}, found "
                        f"{int(positives[i])} ({len(bad_rows)} such rows)")
    labels_all = np.argmax(onehot[:, :len(CLASSES)], axis=1)
    unk = onehot[:, len(CLASSES)] == 1 if gt.has(UNKNOWN_CLASS) else np.zeros(gt.n, bool)

    meta_ids = check_ids(meta, "image", what="ISIC metadata", unique=True)
    meta_row = {v: m for m, v in enumerate(meta_ids)}
    join = np.array([meta_row.get(v, -1) for v in ids], dtype=np.int64)
    metadata_only = len(set(meta_ids) - set(ids))
    attr = ATTRIBUTES[attribute](meta, join, threshold=age_threshold, rule=age_rule)

    rows = RowFilter(NAME, ids)
    rows.drop("unknown_diagnosis", unk, because="whose diagnosis is UNK",
              where=f"{gt_path}")
    rows.drop("no_metadata", join < 0, because="without a metadata row",
              where=f"{meta_path}")
    rows.drop(f"unknown_{attribute}", attr.unknown, because=f"with an empty {attr.column}",
              where=f"{meta_path}")
    paths = find_images(image_dir, ids)
    missing = drop_missing_images(rows, paths, image_dir)
    kept = rows.kept()

    labels = labels_all[kept]
    groups = attr.groups[kept]
    lesion_col = meta.col("lesion_id") if meta.has("lesion_id") else None
    # an image without lesion_id is a lesion of its own; the prefix keeps it apart from ids
    lesions = None if lesion_col is None else np.array(
        [lesion_col[join[i]] or f"image:{ids[i]}" for i in kept], dtype=object)
    if split == "lesion":
        splits = stratified_split(labels, groups, fractions=fractions, seed=seed,
                                  cluster_ids=lesions.astype(str))
        split_info = {"by": "lesion_id", "rule": "stratified by label x group; all images of "
                      "one lesion_id in one split; empty lesion_id = its own lesion",
                      "lesions": int(len(set(lesions)))}
    else:
        present = np.flatnonzero([p is not None for p in paths])
        by_position = fairquant_image_split(len(present), seed=seed, fractions=fractions)
        splits = remap_splits({k: present[v] for k, v in by_position.items()}, kept)
        split_info = {"by": "image", "rule": "FairQuant image-level: random.Random(seed)"
                      ".shuffle over ground-truth rows whose image exists; first "
                      "int(f_train*n) train, next block test (FairQuant's evaluation set), "
                      "rest search (unused by FairQuant)"}
    split_info.update(seed=seed, fractions=[float(f) for f in fractions])
    if lesions is not None:
        where: dict[str, set] = {}
        for name, idx in splits.items():
            for les in lesions[idx]:
                where.setdefault(les, set()).add(name)
        split_info["lesions_in_several_splits"] = sum(len(s) > 1 for s in where.values())

    info = {
        "ground_truth": str(gt_path), "metadata": str(meta_path), "images": str(image_dir),
        "grouping": attr.info, **rows.info(), "missing_images": missing,
        "metadata_only": metadata_only, "split": split_info, "resize": RESIZE_POLICY,
    }
    return FileDataset([paths[i] for i in kept], ids=[ids[i] for i in kept], cache=cache,
                       workers=workers, name=NAME, class_names=list(CLASSES),
                       group_names=attr.names, labels=labels, groups=groups,
                       image_size=image_size, attribute=attribute, splits=splits, info=info)
