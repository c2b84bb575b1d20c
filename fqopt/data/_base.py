"""FairDataset: samples of (image, label, group), with class and group names and splits."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from fqopt.errors import UserError

SPLITS = ("train", "search", "test")
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)


class FairDataset(torch.utils.data.Dataset):
    """A labelled image dataset with one sensitive attribute.

    Items are ``(image, label, group)``: ``image`` a float32 tensor ``[3, H, W]`` normalised with
    ``mean``/``std``, ``label`` in ``range(len(class_names))``, ``group`` in
    ``range(len(group_names))``. Subclasses implement :meth:`load_images` (uint8 ``[n, H, W, 3]``
    for a list of indices). ``splits`` maps ``train``/``search``/``test`` to index arrays.
    ``info`` records what the loader did (rows dropped and why, grouping rule, split rule).
    """

    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self, *, name: str, class_names: Sequence[str], group_names: Sequence[str],
                 labels, groups, image_size: int, attribute: str = "group",
                 splits: dict[str, np.ndarray] | None = None, info: dict | None = None):
        self.name = name
        self.class_names = [str(c) for c in class_names]
        self.group_names = [str(g) for g in group_names]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.groups = np.asarray(groups, dtype=np.int64)
        self.image_size = int(image_size)
        self.attribute = attribute
        self.splits = {k: np.asarray(v, dtype=np.int64) for k, v in (splits or {}).items()}
        self.info = dict(info or {})
        if self.labels.shape != self.groups.shape:
            raise ValueError("labels and groups must have the same length")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(class_names)):
            raise ValueError("label index out of range of class_names")
        if len(self.groups) and (self.groups.min() < 0 or self.groups.max() >= len(group_names)):
            raise ValueError("group index out of range of group_names")

    # ------------------------------------------------------------ to implement
    def load_images(self, indices: np.ndarray) -> np.ndarray:
        """uint8 ``[n, H, W, 3]`` at ``image_size`` for the given sample indices."""
        raise NotImplementedError

    # ------------------------------------------------------------------- items
    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_groups(self) -> int:
        return len(self.group_names)

    def to_tensor(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x [n,3,H,W] float32, y [n] int64, g [n] int64)`` for sample indices."""
        idx = np.asarray(indices, dtype=np.int64)
        x = self.to_tensor(self.load_images(idx))
        return x, torch.from_numpy(self.labels[idx]), torch.from_numpy(self.groups[idx])

    def __getitem__(self, i: int):
        x, y, g = self.get_batch([i])
        return x[0], int(y[0]), int(g[0])

    # ------------------------------------------------------------------ splits
    def split(self, name: str) -> np.ndarray:
        """Sample indices of split ``name`` (``train``, ``search`` or ``test``)."""
        if name not in self.splits:
            raise UserError(f"dataset {self.name!r} has no split {name!r}; it has "
                            f"{', '.join(self.splits) or 'none'}")
        return self.splits[name]

    def counts(self, indices=None) -> np.ndarray:
        """``[num_groups, num_classes]`` sample counts (of ``indices`` or of everything)."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices)
        out = np.zeros((self.num_groups, self.num_classes), dtype=np.int64)
        np.add.at(out, (self.groups[idx], self.labels[idx]), 1)
        return out

    def describe(self) -> dict:
        return {"name": self.name, "samples": len(self), "image_size": self.image_size,
                "attribute": self.attribute, "classes": self.class_names,
                "groups": self.group_names,
                "group_counts": np.bincount(self.groups, minlength=self.num_groups).tolist(),
                "splits": {k: len(v) for k, v in self.splits.items()}, "info": self.info}


def iter_batches(dataset: FairDataset, indices, batch_size: int, *, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Batches ``(x, y, g)`` over ``indices`` (shuffled with ``seed`` if asked)."""
    idx = np.asarray(indices, dtype=np.int64)
    if shuffle:
        idx = idx[np.random.default_rng(seed).permutation(len(idx))]
    stop = len(idx) - (len(idx) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        chunk = idx[start:start + batch_size]
        if len(chunk):
            yield dataset.get_batch(chunk)


def stratified_split(labels, groups, *, fractions=DEFAULT_FRACTIONS, seed: int = 0,
                     cluster_ids=None) -> dict[str, np.ndarray]:
    """Split into ``train``/``search``/``test`` stratified by label x group.

    With ``cluster_ids`` (e.g. ISIC lesion ids), all samples of one cluster land in the same
    split; clusters are stratified by the label x group of their first sample.
    Each stratum is divided by largest-remainder rounding of ``fractions``.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or np.any(fr < 0) or not np.isclose(fr.sum(), 1.0):
        raise UserError(f"split fractions must be three non-negative numbers summing to 1, "
                        f"got {list(fractions)}")
    rng = np.random.default_rng(seed)
    n = len(labels)
    if cluster_ids is None:
        members = [np.array([i]) for i in range(n)]
    else:
        cluster_ids = np.asarray(cluster_ids)
        _, first, inverse = np.unique(cluster_ids, return_index=True, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse))
        members = np.split(order, bounds[:-1])
    heads = np.array([m[0] for m in members])
    strata: dict[tuple[int, int], list[int]] = {}
    for ci, h in enumerate(heads):
        strata.setdefault((int(labels[h]), int(groups[h])), []).append(ci)
    out: list[list[int]] = [[], [], []]
    for key in sorted(strata):
        cl = np.array(strata[key])
        cl = cl[rng.permutation(len(cl))]
        want = fr * len(cl)
        take = np.floor(want).astype(int)
        rest = len(cl) - take.sum()
        # largest remainder, ties broken towards train, then test, then search
        order = sorted(range(3), key=lambda j: (-(want[j] - take[j]), (0, 2, 1).index(j)))
        for j in order[:rest]:
            take[j] += 1
        start = 0
        for j in range(3):
            for ci in cl[start:start + take[j]]:
                out[j].extend(members[ci].tolist())
            start += take[j]
    return {name: np.sort(np.array(idx, dtype=np.int64)) for name, idx in zip(SPLITS, out)}


Loader = Callable[..., FairDataset]
