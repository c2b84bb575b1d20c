"""Small datasets in the real on-disk formats, written by tests (never downloaded).

- :func:`make_fitzpatrick17k`: ``fitzpatrick17k.csv`` (current or older schema) + ``images/``
  with ``<md5hash>.jpg``;
- :func:`make_isic2019`: ``ISIC_2019_Training_GroundTruth.csv`` (one-hot ``0.0``/``1.0``),
  ``ISIC_2019_Training_Metadata.csv`` and ``ISIC_2019_Training_Input/<image>.jpg``, with
  ``_downsampled`` ids, lesions of several images, empty sex / age / lesion_id;
- :func:`make_image_csv`: a folder of images and a ``path,label,group`` CSV;
- :class:`Tiny`: a hand-countable model that is not a timm architecture;
- :func:`random_weight_run`: a run folder with an untrained ``test_resnet`` checkpoint (no
  training), and :func:`randomize_batchnorm` for models whose every stored float should matter;
- :func:`copy_trained_run`: a trained run without its search, for a search to start on.

Each returns a record of what it wrote (paths, rows, which rows are unknown or missing) so
tests can compute expectations independently of the loaders. Images are real JPEG files written
with PIL; smooth random colour fields, so decoding and resizing are exercised.
"""

from __future__ import annotations

import csv
import re
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

#: (label, nine_partition_label, three_partition_label), in no particular order
CONDITIONS = (
    ("psoriasis", "inflammatory", "non-neoplastic"),
    ("basal cell carcinoma", "malignant epidermal", "malignant"),
    ("acne vulgaris", "inflammatory", "non-neoplastic"),
    ("melanoma", "malignant melanoma", "malignant"),
    ("seborrheic keratosis", "benign epidermal", "benign"),
    ("dermatofibroma", "benign dermal", "benign"),
)
FITZ_CURRENT = ["md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label",
                "nine_partition_label", "three_partition_label", "qc", "url", "url_alphanum"]
FITZ_OLDER = ["", "md5hash", "fitzpatrick", "label", "nine_partition_label",
              "three_partition_label", "qc", "url", "url_alphanum"]
ISIC_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
ISIC_GT_HEADER = ["image", *ISIC_CLASSES, "UNK"]
ISIC_META_HEADER = ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"]
SITES = ("anterior torso", "head/neck", "lower extremity", "upper extremity", "posterior torso",
         "")


def write_jpeg(path: Path, rng: np.random.Generator, size=(24, 20), quality: int = 90) -> None:
    """A smooth random RGB image of ``size`` = (width, height) saved as JPEG at ``path``."""
    from PIL import Image

    w, h = size
    coarse = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((w, h), Image.Resampling.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=quality)


def write_rows(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _pick(rng, candidates, k) -> list[int]:
    return sorted(rng.choice(np.asarray(candidates), size=k, replace=False).tolist()) if k else []


# ------------------------------------------------------------------------- Fitzpatrick17k
@dataclass
class FitzpatrickFixture:
    root: Path
    csv: Path
    images: Path
    rows: list[dict]  # md5hash, skin (1-6 or -1), label, nine_partition_label, ...
    unknown: list[str] = field(default_factory=list)  # md5hash of skin type -1 rows
    missing: list[str] = field(default_factory=list)  # md5hash of rows without image file

    def kept_rows(self, keep_unknown: bool = False) -> list[dict]:
        """Rows a loader should keep (file order)."""
        gone = set(self.missing) | (set() if keep_unknown else set(self.unknown))
        return [r for r in self.rows if r["md5hash"] not in gone]


def make_fitzpatrick17k(root, *, n: int = 60, schema: str = "current", n_unknown: int = 4,
                        n_missing: int = 3, seed: int = 0, image_size=(24, 20),
                        images_dir: str = "images",
                        write_images: bool = True) -> FitzpatrickFixture:
    """Write ``root/fitzpatrick17k.csv`` in ``schema`` (``current``/``older``) and the images.

    Skin types cycle through 1-6; ``n_unknown`` rows get -1 and ``n_missing`` other rows get
    no image file. The rows (hashes, types, labels) depend on ``seed`` only, not on ``schema``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    unknown_idx = set(_pick(rng, range(n), n_unknown))
    missing_idx = set(_pick(rng, [i for i in range(n) if i not in unknown_idx], n_missing))
    rows = []
    for i in range(n):
        md5 = hashlib.md5(f"fitz-{seed}-{i}".encode()).hexdigest()
        label, nine, three = CONDITIONS[int(rng.integers(len(CONDITIONS)))]
        skin = -1 if i in unknown_idx else 1 + i % 6
        rows.append({"md5hash": md5, "skin": skin, "centaur": skin if skin > 0 else 3,
                     "label": label, "nine_partition_label": nine,
                     "three_partition_label": three,
                     "url": f"https://example.org/atlas/{md5}.jpg"})
    out = []
    for i, r in enumerate(rows):
        url_alnum = "".join(c for c in r["url"] if c.isalnum())
        if schema == "current":
            out.append([r["md5hash"], r["skin"], r["centaur"], r["label"],
                        r["nine_partition_label"], r["three_partition_label"], "", r["url"],
                        url_alnum])
        elif schema == "older":
            out.append([i, r["md5hash"], r["skin"], r["label"], r["nine_partition_label"],
                        r["three_partition_label"], "", r["url"], url_alnum])
        else:
            raise ValueError(f"schema must be 'current' or 'older', got {schema!r}")
    csv_path = root / "fitzpatrick17k.csv"
    write_rows(csv_path, FITZ_CURRENT if schema == "current" else FITZ_OLDER, out)
    images = root / images_dir
    images.mkdir(parents=True, exist_ok=True)
    if write_images:
        img_rng = np.random.default_rng(seed + 1)
        for i, r in enumerate(rows):
            if i not in missing_idx:
                write_jpeg(images / f"{r['md5hash']}.jpg", img_rng, image_size)
    return FitzpatrickFixture(root, csv_path, images, rows,
                              unknown=[rows[i]["md5hash"] for i in sorted(unknown_idx)],
                              missing=[rows[i]["md5hash"] for i in sorted(missing_idx)])


# ------------------------------------------------------------------------------ ISIC 2019
@dataclass
class IsicFixture:
    root: Path
    ground_truth: Path
    metadata: Path
    images: Path
    rows: list[dict]  # image, label (index into ISIC_CLASSES), age (float|None), sex, lesion_id
    missing: list[str] = field(default_factory=list)

    def row(self, image: str) -> dict:
        return next(r for r in self.rows if r["image"] == image)


def make_isic2019(root, *, n: int = 90, n_downsampled: int = 12, n_missing: int = 3,
                  n_empty_sex: int = 4, n_empty_age: int = 3, n_no_lesion: int = 6,
                  seed: int = 0, image_size=(32, 24),
                  shuffle_metadata: bool = True) -> IsicFixture:
    """Write the two ISIC 2019 CSVs and ``ISIC_2019_Training_Input/``.

    Images come in lesions of 1-3 images sharing label, sex and age; ``n_no_lesion`` images
    have an empty ``lesion_id``; the last ``n_downsampled`` ids end in ``_downsampled``; ages
    are multiples of 5 (some exactly 60); the metadata rows are in a different order than the
    ground truth when ``shuffle_metadata``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    lesion = 0
    while len(rows) < n:
        size = int(rng.integers(1, 4))
        label = int(rng.integers(len(ISIC_CLASSES)))
        sex = ("female", "male")[int(rng.integers(2))]
        age = float(rng.choice([30.0, 45.0, 55.0, 60.0, 60.0, 65.0, 70.0, 85.0]))
        site = SITES[int(rng.integers(len(SITES)))]
        for _ in range(min(size, n - len(rows))):
            rows.append({"label": label, "sex": sex, "age": age, "site": site,
                         "lesion_id": f"HAM_{lesion:07d}"})
        lesion += 1
    for i, r in enumerate(rows):
        r["image"] = f"ISIC_{i:07d}" + ("_downsampled" if i >= n - n_downsampled else "")
    for i in _pick(rng, range(n), n_no_lesion):
        rows[i]["lesion_id"] = ""
    for i in _pick(rng, range(n), n_empty_sex):
        rows[i]["sex"] = ""
    for i in _pick(rng, range(n), n_empty_age):
        rows[i]["age"] = None
    missing_idx = set(_pick(rng, range(n), n_missing))

    gt = [[r["image"], *["1.0" if k == r["label"] else "0.0" for k in range(8)], "0.0"]
          for r in rows]
    meta = [[r["image"], "" if r["age"] is None else f"{r['age']:.1f}", r["site"],
             r["lesion_id"], r["sex"]] for r in rows]
    if shuffle_metadata:
        meta = [meta[i] for i in rng.permutation(n)]
    gt_path = root / "ISIC_2019_Training_GroundTruth.csv"
    meta_path = root / "ISIC_2019_Training_Metadata.csv"
    write_rows(gt_path, ISIC_GT_HEADER, gt)
    write_rows(meta_path, ISIC_META_HEADER, meta)
    images = root / "ISIC_2019_Training_Input"
    images.mkdir(parents=True, exist_ok=True)
    img_rng = np.random.default_rng(seed + 1)
    for i, r in enumerate(rows):
        if i not in missing_idx:
            write_jpeg(images / f"{r['image']}.jpg", img_rng, image_size)
    return IsicFixture(root, gt_path, meta_path, images, rows,
                       missing=[rows[i]["image"] for i in sorted(missing_idx)])


# ------------------------------------------------------------------------------- csv
@dataclass
class ImageCsvFixture:
    root: Path
    csv: Path
    rows: list[dict]  # path (relative), label, group
    missing: list[str] = field(default_factory=list)


def make_image_csv(root, *, n: int = 40, labels=("dog", "cat", "bird"), groups=("b", "a"),
                   n_missing: int = 2, seed: int = 0, subfolder: str = "imgs",
                   image_size=(20, 20), csv_name: str = "data.csv") -> ImageCsvFixture:
    """``root/<csv_name>`` with ``path,label,group`` rows and images under ``root/subfolder``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = [{"path": f"{subfolder}/img_{i:04d}.jpg", "label": str(labels[i % len(labels)]),
             "group": str(groups[(i // len(labels)) % len(groups)])} for i in range(n)]
    missing_idx = set(_pick(rng, range(n), n_missing))
    for i, r in enumerate(rows):
        if i not in missing_idx:
            write_jpeg(root / r["path"], rng, image_size)
    csv_path = root / csv_name
    write_rows(csv_path, ["path", "label", "group"],
               [[r["path"], r["label"], r["group"]] for r in rows])
    return ImageCsvFixture(root, csv_path, rows,
                           missing=[rows[i]["path"] for i in sorted(missing_idx)])


class Tiny(nn.Module):
    """A hand-countable model: conv (stride 2, bias) -> BN -> depthwise conv -> linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.pool(self.dw(torch.relu(self.bn(self.stem(x))))).flatten(1))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm affine parameters and statistics (returns the model in eval mode).

    timm zero-initialises each residual block's last BatchNorm, which would leave those layers
    without gradient in an untrained model, and fresh statistics (mean 0, variance 1) would let
    a wrong export of them go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.rand(mod.running_mean.shape, generator=g) * .2 - .1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + .5)
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=g) + .5)
                mod.bias.copy_(torch.rand(mod.bias.shape, generator=g) * .2 - .1)
                mod.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
    return model.eval()


def random_weight_run(path, *, samples: int = 150, image_size: int = 16, seed: int = 0,
                      batchnorm: bool = False):
    """A run folder on a small synthderm whose ``model.pt`` is an untrained ``test_resnet``
    (weights from ``torch.manual_seed(seed)``; with ``batchnorm``, BatchNorm randomised too):
    enough to profile, apply, evaluate, refine and export plans without training."""
    from fqopt.runs import Run

    run = Run.create(path, dataset="synthderm",
                     dataset_options={"n": samples, "image_size": image_size},
                     model="test_resnet", seed=0)
    torch.manual_seed(seed)
    model = run.new_model()
    if batchnorm:
        randomize_batchnorm(model, seed=seed)
    torch.save(model.state_dict(), run.checkpoint_path)
    return run


def copy_trained_run(run, dest: Path):
    """A copy of a trained run folder at ``dest`` without anything a search wrote or cached
    (study, sensitivity tables, plans, reports, refined models, artifacts): a search on it starts
    from the trained model."""
    import shutil

    from fqopt.runs import Run

    shutil.copytree(run.path, dest)
    for stale in ("study.db", "sensitivity.npz"):
        (dest / stale).unlink(missing_ok=True)
    for folder in ("tables", "plans", "reports", "refined", "artifacts"):
        shutil.rmtree(dest / folder, ignore_errors=True)
    return Run.open(dest)


def expect_user_error(capsys, argv, *needles, absent=()):
    """Run ``fqopt argv`` in-process; expect exit 2 and one stderr error line holding every
    needle (and none of ``absent``). A long command (``fqopt search``) may narrate its stages
    before it stops: stage headers and indented progress lines are allowed above the error,
    nothing else. Returns the error line."""
    from fqopt.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    # "fqopt: error: ..." (a UserError) or "fqopt CMD: error: ..." (a bad option, from click)
    assert lines and re.match(r"fqopt( [\w-]+)?: error: ", lines[-1]), err
    assert all(line.startswith(("──", "  ")) for line in lines[:-1]), err
    err = lines[-1]
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    for a in absent:
        assert a not in err, err
    return err
