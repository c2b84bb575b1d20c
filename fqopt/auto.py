"""One call from any model and any loader to a plan: ``fqopt.auto_quantize`` (issue #14).

The shape follows ModelOpt's ``auto_quantize(model, data_loader=..., constraints=...)`` and
torchao's ``quantize_``: profile per group, solve under the budget, return the
:class:`~fqopt.plan.AllocationPlan` and, when asked, apply it in place.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from fqopt.apply import quantize_
from fqopt.data._base import FairDataset
from fqopt.errors import UserError
from fqopt.profiling import profile
from fqopt.solvers import AllocationProblem, solve

__all__ = ["LoaderDataset", "auto_quantize"]


class LoaderDataset(FairDataset):
    """Batches ``(images, labels, groups)`` collected in memory as a :class:`FairDataset`.

    Images are kept as given (already normalised by the user's pipeline); every sample is in
    every split, since the caller chose the data.
    """

    def __init__(self, images: torch.Tensor, labels, groups, *, group_names, num_classes: int,
                 name: str = "loader"):
        self.images = images
        n = len(labels)
        all_idx = np.arange(n)
        super().__init__(name=name, class_names=[str(c) for c in range(num_classes)],
                         group_names=group_names, labels=labels, groups=groups,
                         image_size=int(images.shape[-1]),
                         splits={"train": all_idx, "search": all_idx, "test": all_idx})

    def get_batch(self, indices):
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return (self.images[idx], torch.from_numpy(self.labels[idx.numpy()]),
                torch.from_numpy(self.groups[idx.numpy()]))


def _as_list(v, n: int, what: str, i: int) -> list:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().reshape(-1).tolist()
    elif isinstance(v, np.ndarray):
        v = v.reshape(-1).tolist()
    elif isinstance(v, (str, int, np.integer)):
        v = [v]
    else:
        v = list(v)
    if len(v) != n:
        raise UserError(f"batch {i} has {n} images but {len(v)} {what}")
    return v


def collect(loader: Iterable, max_samples: int | None = 512, num_classes: int | None = None
            ) -> LoaderDataset:
    """Up to ``max_samples`` samples of ``loader`` (batches ``(images, labels, groups)``) as a
    :class:`LoaderDataset`. Groups may be integers or strings; their names are sorted (numbers
    numerically)."""
    xs, ys, gs = [], [], []
    n = 0
    for i, batch in enumerate(loader):
        if isinstance(batch, dict):
            batch = tuple(batch.get(k) for k in ("images", "labels", "groups"))
        if not isinstance(batch, (tuple, list)) or len(batch) != 3 or batch[2] is None:
            size = len(batch) if isinstance(batch, (tuple, list)) else type(batch).__name__
            raise UserError(f"auto_quantize needs batches of (images, labels, groups); batch {i}"
                            f" is {size if isinstance(size, str) else f'a {size}-tuple'}: give "
                            "each image's group (skin type, sex, ...) as a third item")
        x, y, g = batch
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise UserError(f"batch {i}: images must be a tensor [N, C, H, W], got "
                            f"{getattr(x, 'shape', type(x).__name__)}")
        m = x.shape[0]
        xs.append(x.detach().cpu())
        ys.extend(int(v) for v in _as_list(y, m, "labels", i))
        gs.extend(_as_list(g, m, "groups", i))
        n += m
        if max_samples is not None and n >= max_samples:
            break
    if n == 0:
        raise UserError("auto_quantize: the loader yielded no batches")
    images = torch.cat(xs)
    labels = np.asarray(ys, dtype=np.int64)
    if max_samples is not None:
        images, labels, gs = images[:max_samples], labels[:max_samples], gs[:max_samples]
    if labels.min() < 0:
        raise UserError(f"labels must be class indices >= 0, got {int(labels.min())}")
    keys = [g.item() if isinstance(g, np.generic) else g for g in gs]
    names = sorted(set(keys), key=lambda v: (0, v, "") if isinstance(v, (int, float))
                   else (1, 0, str(v)))
    index = {k: j for j, k in enumerate(names)}
    groups = np.asarray([index[k] for k in keys], dtype=np.int64)
    classes = int(num_classes or labels.max() + 1)
    return LoaderDataset(images, labels, groups, group_names=[str(v) for v in names],
                         num_classes=max(classes, int(labels.max()) + 1))


def auto_quantize(model: nn.Module, loader: Iterable, *, budget: float = 4.0,
                  budget_kind: str = "avg_bits", objective: str = "worst",
                  method: str = "fisher", granularity: str = "channel",
                  bits: Sequence[int] = (2, 3, 4, 6, 8), quantizer: str = "maxabs",
                  pin="default", solver: str = "lagrange", time_limit: float = 30.0,
                  max_samples: int | None = 512, batch_size: int = 32, apply: bool = False,
                  seed: int = 0, model_name: str | None = None):
    """Profile ``model`` on ``loader``, solve for a fair bit allocation and return the plan.

    model: any ``torch.nn.Module`` with Conv2d/Linear layers (timm, torchvision, your own).
    loader: any iterable of ``(images [N, C, H, W], labels [N], groups [N])`` batches, e.g. a
        DataLoader; groups are integers or strings (the sensitive attribute of each image).
        At most ``max_samples`` samples are read (kept in memory).
    budget, budget_kind: average bits (parameter-weighted), ``size_bytes`` or ``bops``.
    objective: ``worst`` (protect the worst-off group), ``balanced``, ``mean``, ``blend:λ``,
        ``cvar:α``. method/granularity/bits/quantizer/pin: as ``fqopt profile``.
    solver: a back-end of ``fqopt.solvers`` (``lagrange`` certifies its gap in milliseconds).
    apply: also replace the weights by their quantized values in place (``quantize_``).
    Returns the :class:`~fqopt.plan.AllocationPlan` (its ``quantizer`` and the loader's group
    names are recorded in ``plan.meta``).
    """
    if not isinstance(model, nn.Module):
        raise UserError(f"auto_quantize needs a torch.nn.Module, got {type(model).__name__}")
    ds = collect(loader, max_samples=max_samples)
    if ds.num_groups < 1:
        raise UserError("auto_quantize: no groups in the loader's batches")
    name = model_name or type(model).__name__
    modes = {m: m.training for m in model.modules()}
    try:
        table = profile(model, ds, np.arange(len(ds)), method=method, granularity=granularity,
                        bits=bits, quantizer=quantizer, pin=pin, batch_size=batch_size,
                        seed=seed, model_name=name, allow_empty_groups=False)
    finally:
        for m, mode in modes.items():
            m.training = mode
    problem = AllocationProblem.from_table(table, budget=budget, budget_kind=budget_kind,
                                           objective=objective)
    if not problem.is_budget_feasible:
        raise UserError(problem.infeasibility_message())
    res = solve(problem, solver, time_limit=time_limit)
    if not res.ok:
        raise UserError(f"solver {res.backend} found no assignment for budget {budget:g} "
                        f"{budget_kind} within {time_limit:g} s ({res.message})")
    # the table's method, dataset, granularity and quantizer come with the problem
    plan = res.to_plan(meta={"groups": ds.group_names, "samples": len(ds),
                             "quantizer": quantizer, "source": "auto_quantize"})
    if apply:
        quantize_(model, plan, method=quantizer)
    return plan
