"""Group-aware sensitivity profiling (docs/design.md §4.2): ``profile(...) -> SensitivityTable``.

``costs[u, g, k]`` estimates the rise of group g's mean cross-entropy when unit u alone is
quantized to ``bits[k]``; ``δ_k = Q_k(w) - w`` is the quantization error of the unit's weights.

Methods (a registry, :data:`METHODS`; add one with :func:`register_method`):

- ``fisher`` (default): ``Σ_i ½·F_{g,i}·δ_i²`` (+ ``ḡ_{g,i}·δ_i`` with ``first_order=True``),
  with ``F_g`` the diagonal empirical Fisher of group g.
- ``hutchinson``: the same with the Hessian diagonal of group g's mean loss estimated by
  Rademacher probes, ``diag(H) ≈ E[v ⊙ Hv]`` (double backward).
- ``measured``: quantize one layer, measure every group's loss change (layer granularity only).
- ``gradient`` / ``grape``: FairQuant's importance maps ``I_g = mean_b |∂ℓ_g/∂w|`` and
  ``mean_b (w·∂ℓ_g/∂w)²``, turned into costs by the unit's normalised quantization error.

**One pass for all groups.** The calibration samples are sorted by group and cut into
group-homogeneous batches, so every forward/backward belongs to exactly one group: profiling G
groups costs one forward and backward pass over the calibration data, whatever G is (FairQuant
instead runs one backward per group per batch).

**The Fisher estimator.** Per-sample gradients would cost several passes, so ``F_g`` is estimated
from the batch gradients ``g_b`` (of the mean loss of batch b, ``n_b`` samples of group g):
``F̂_g = Σ_b n_b²·g_b² / Σ_b n_b``. Since ``Var(g_b) = σ²/n_b``, ``E[n_b·g_b²] = σ² + n_b·ḡ²``:
the estimate equals the per-sample Fisher ``σ² + ḡ²`` up to ``(n_b − 1)·ḡ²``, small where the
model is trained (ḡ ≈ 0) and in any case non-negative. ``ḡ_g = Σ_b n_b·g_b / Σ_b n_b`` is the
exact gradient of group g's mean loss over its calibration samples.

Per-sample gradients (``batch_size=1``) were measured to rank plans no better than batches of
64 (benchmarks/RESULTS.md), so the cheap estimator is the default.

**First-order term.** At a trained model the gradient term ``ḡ·δ`` is small, signed and noisy
(calibration samples are training samples the model has fitted), and it is linear in δ, so it can
make a coarse quantization look *cheaper* than a fine one. The default is therefore
``first_order=False`` (second-order term only, as HAWQ does); with the first-order term the
ranking of random plans collapses (Spearman 0.6-0.7 on average, 0.05-0.26 for the worst group).

**What a table can predict.** A table is additive: a plan's predicted cost is the sum of its
units' single-unit costs. On the default model ``fisher`` ranks random layer plans' per-group
loss rises with Spearman 0.83-0.91 on average over groups (four plan draws), against 0.90-0.95
for the exact single-layer costs measured on the evaluation samples themselves (the ceiling of
an additive table) and 0.87-0.93 for the exact Gauss-Newton quadratic. The group it ranks
worst is the best-served one (I): a 2-bit layer can push its confidently classified samples
across the decision boundary, a nonlinearity of the network that no second-order estimate at
the full-precision weights sees (benchmarks/fidelity.py, benchmarks/RESULTS.md).

The model is profiled in eval mode: BatchNorm running statistics are never touched. Only the
quantizable weights require gradients during profiling; modes and ``requires_grad`` flags are
restored afterwards, and ``.grad`` attributes are never written (``torch.autograd.grad``).

One module (~620 lines, 80 of them this docstring): the methods share the calibration batches,
the context and the one gradient pass above, and each is a short registered class on top of them.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fqopt._registry import Registry
from fqopt._version import __version__
from fqopt.apply import quantized_layers
from fqopt.discovery import discover_units, quantizable_layers
from fqopt.errors import UserError
from fqopt.quantizers import QUANTIZERS, fake_quantize
from fqopt.sensitivity import SensitivityTable
from fqopt.units import GRANULARITIES, MAX_BITS, MIN_BITS, UnitSet, check_bits

__all__ = ["METHODS", "DEFAULT_BITS", "Calibration", "ProfileContext", "SensitivityMethod",
           "available_methods", "profile", "register_method", "select_calibration"]

DEFAULT_BITS = (2, 3, 4, 6, 8)
CACHE_LIMIT_BYTES = 1 << 30   # calibration tensors kept in memory for multi-pass methods
COMBINE_RULES = ("max", "mean", "balanced")  # FairQuant's per-weight group combinations

Callback = Callable[..., None]


# ------------------------------------------------------------------ calibration data
def select_calibration(groups: np.ndarray, indices, calib: int | None, seed: int = 0
                       ) -> np.ndarray:
    """At most ``calib`` of ``indices``, stratified by group (largest-remainder shares, at
    least one sample of every group present), drawn with ``seed``. Returns sorted indices."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if calib is None or calib >= len(idx):
        return np.sort(idx)
    if calib < 1:
        raise UserError(f"calibration size must be at least 1 sample, got {calib}")
    rng = np.random.default_rng(seed)
    g = np.asarray(groups)[idx]
    present = np.unique(g)
    counts = np.array([(g == k).sum() for k in present])
    want = counts * (calib / len(idx))
    take = np.maximum(np.floor(want).astype(int), 1 if calib >= len(present) else 0)
    take = np.minimum(take, counts)
    rest = calib - int(take.sum())
    while rest < 0:  # the one-per-group floor overshot: take back from the largest shares
        take[int(np.argmax(take))] -= 1
        rest += 1
    order = np.argsort(-(want - np.floor(want)), kind="stable")
    i = 0
    while rest > 0 and i < 10 * len(order) + calib:
        j = order[i % len(order)]
        if take[j] < counts[j]:
            take[j] += 1
            rest -= 1
        i += 1
    chosen = [rng.choice(idx[g == k], size=int(t), replace=False)
              for k, t in zip(present, take) if t > 0]
    return np.sort(np.concatenate(chosen))


class Calibration:
    """Group-homogeneous batches over calibration samples.

    ``batches`` is a list of ``(group index, sample indices)``; each group's samples (in a seeded
    random order) are cut into ``ceil(n_g / batch_size)`` near-equal batches.
    ``group_counts``: ``[G]`` samples per group.
    """

    def __init__(self, dataset, indices, *, batch_size: int = 64, seed: int = 0,
                 device: torch.device | str = "cpu", cache: bool = False):
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        self.dataset = dataset
        self.indices = np.sort(np.asarray(indices, dtype=np.int64).reshape(-1))
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        G = dataset.num_groups
        groups = np.asarray(dataset.groups)[self.indices]
        self.group_counts = np.bincount(groups, minlength=G).astype(np.int64)
        rng = np.random.default_rng(seed)
        self.batches: list[tuple[int, np.ndarray]] = []
        for g in range(G):
            members = self.indices[groups == g]
            if len(members) == 0:
                continue
            members = members[rng.permutation(len(members))]
            for chunk in np.array_split(members, math.ceil(len(members) / self.batch_size)):
                self.batches.append((g, chunk))
        size = dataset.image_size
        self._cache_ok = cache and len(self.indices) * 3 * size * size * 4 <= CACHE_LIMIT_BYTES
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        """Yields ``(g, x [n,3,H,W], y [n])`` on ``device``."""
        for b, (g, idx) in enumerate(self.batches):
            if b in self._cache:
                x, y = self._cache[b]
            else:
                x, y, _ = self.dataset.get_batch(idx)
                x, y = x.to(self.device), y.to(self.device)
                if self._cache_ok:
                    self._cache[b] = (x, y)
            yield g, x, y


# ------------------------------------------------------------------ context for methods
@dataclass
class ProfileContext:
    """Everything a :class:`SensitivityMethod` needs; built once by :func:`profile`.

    ``modules``/``weights`` follow ``units.layers``; ``deltas[l][k]`` is ``Q_k(w_l) − w_l``
    (same shape as the weight) for ``bits[k]``.
    """

    model: nn.Module
    units: UnitSet
    calibration: Calibration
    bits: tuple[int, ...]
    quantizer: str
    group_names: list[str]
    modules: list[nn.Module]
    weights: list[torch.Tensor]
    options: dict = field(default_factory=dict)
    callback: Callback | None = None
    _deltas: list[list[torch.Tensor]] | None = None

    @property
    def num_groups(self) -> int:
        return len(self.group_names)

    @property
    def deltas(self) -> list[list[torch.Tensor]]:
        if self._deltas is None:
            with torch.no_grad():
                self._deltas = [[fake_quantize(w, b, self.quantizer) - w.detach()
                                 for b in self.bits] for w in self.weights]
        return self._deltas

    def unit_sum(self, layer: int, t: torch.Tensor) -> torch.Tensor:
        """Sum a weight-shaped tensor of layer ``layer`` over each unit: ``[1]`` (layer
        granularity) or ``[out_channels]`` (channel), float64."""
        t = t.detach().to(torch.float64)
        if self.units.granularity == "layer":
            return t.sum().reshape(1)
        return t.reshape(t.shape[0], -1).sum(dim=1)

    def empty_costs(self) -> np.ndarray:
        return np.zeros((len(self.units), self.num_groups, len(self.bits)), dtype=np.float64)

    def report(self, stage: str, done: int, total: int | None, **info) -> None:
        if self.callback is not None:
            self.callback(stage, done, total, **info)


@dataclass
class MethodResult:
    costs: np.ndarray                                  # float64 [U, G, K]
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


class SensitivityMethod(ABC):
    """A way to fill ``costs[U, G, K]``. Subclasses set ``name`` and implement :meth:`run`."""

    name: str = ""
    layer_only: bool = False      # True: only defined at layer granularity
    needs_cache: bool = False     # True: several passes over the calibration data

    @abstractmethod
    def run(self, ctx: ProfileContext) -> MethodResult:
        ...


METHODS: Registry[type[SensitivityMethod]] = Registry("sensitivity method", name_attr="name")


def register_method(name: str):
    """Class decorator: register a :class:`SensitivityMethod` under ``name``."""
    return METHODS.register(name)


def available_methods() -> list[str]:
    return METHODS.names()


# ------------------------------------------------------------------ gradient passes
def _gradient_pass(ctx: ProfileContext, acc, *, create_graph: bool = False,
                   stage: str = "profile") -> None:
    """One forward + backward per calibration batch; ``acc.add(g, n, loss, grads)`` receives the
    gradients of the batch's mean loss w.r.t. the layer weights; ``acc.finish(g)`` is called
    once after each group's last batch (batches are sorted by group)."""
    total = len(ctx.calibration)
    current = None
    with torch.enable_grad():
        for done, (g, x, y) in enumerate(ctx.calibration, start=1):
            if current is not None and g != current:
                acc.finish(current)
            current = g
            loss = F.cross_entropy(ctx.model(x), y)
            grads = torch.autograd.grad(loss, ctx.weights, create_graph=create_graph,
                                        allow_unused=True)
            # a layer the forward pass does not use has no gradient: it costs nothing
            grads = [torch.zeros_like(w) if gr is None else gr
                     for w, gr in zip(ctx.weights, grads)]
            acc.add(g, len(y), loss, grads)
            ctx.report(stage, done, total, group=ctx.group_names[g])
    if current is not None:
        acc.finish(current)


class _TaylorAccumulator:
    """Per group: ``ḡ`` and a curvature diagonal, reduced to unit costs when the group ends."""

    def __init__(self, ctx: ProfileContext, first_order: bool):
        self.ctx = ctx
        self.first_order = first_order
        self.costs = ctx.empty_costs()
        self.first = ctx.empty_costs()     # first-order part alone (for meta/diagnostics)
        self._reset()

    def _reset(self):
        self.n = 0
        self.grad_sum = [torch.zeros_like(w) for w in self.ctx.weights]
        self.curv_sum = [torch.zeros_like(w) for w in self.ctx.weights]

    def finish(self, g: int) -> None:
        ctx, n = self.ctx, self.n
        slices = ctx.units.unit_slices()
        for li, layer in enumerate(ctx.units.layers):
            sl = slices[layer.name]
            gbar = self.grad_sum[li] / n
            curv = self.curv_sum[li] / n
            for k, d in enumerate(ctx.deltas[li]):
                second = 0.5 * ctx.unit_sum(li, curv * d * d)
                second = torch.clamp(second, min=0.0)  # a curvature estimate may dip below 0
                first = ctx.unit_sum(li, gbar * d)
                self.first[sl, g, k] = first.cpu().numpy()
                total = second + first if self.first_order else second
                self.costs[sl, g, k] = total.cpu().numpy()
        self._reset()


class _FisherAccumulator(_TaylorAccumulator):
    def add(self, g, n, loss, grads):
        self.n += n
        for s, q, gr in zip(self.grad_sum, self.curv_sum, grads):
            s.add_(gr, alpha=float(n))
            q.addcmul_(gr, gr, value=float(n * n))   # n_b²·g_b², see the module docstring


@register_method("fisher")
class Fisher(SensitivityMethod):
    """Second-order Taylor cost with the group's diagonal empirical Fisher."""

    def run(self, ctx):
        acc = _FisherAccumulator(ctx, ctx.options.get("first_order", False))
        _gradient_pass(ctx, acc, stage="fisher")
        return MethodResult(acc.costs, meta={"estimator": "F = sum_b n_b^2 g_b^2 / sum_b n_b",
                                             "first_order": acc.first_order})


class _HutchinsonAccumulator(_TaylorAccumulator):
    def __init__(self, ctx, first_order, probes: int, generator: torch.Generator):
        super().__init__(ctx, first_order)
        self.probes = probes
        self.gen = generator

    def add(self, g, n, loss, grads):
        ctx = self.ctx
        self.n += n
        for s, gr in zip(self.grad_sum, grads):
            s.add_(gr.detach(), alpha=float(n))
        # gradients that do not depend on the weights (a loss linear in a layer) have zero
        # curvature and no graph to differentiate
        live = [i for i, gr in enumerate(grads) if gr.requires_grad]
        for p in range(self.probes):
            vs = [(torch.randint(0, 2, w.shape, generator=self.gen) * 2 - 1)
                  .to(device=w.device, dtype=w.dtype) for w in ctx.weights]
            if not live:
                break
            hv = torch.autograd.grad([grads[i] for i in live], ctx.weights,
                                     grad_outputs=[vs[i] for i in live],
                                     retain_graph=p < self.probes - 1, allow_unused=True)
            for q, v, h in zip(self.curv_sum, vs, hv):
                if h is not None:
                    # batch b's Hessian enters group g's mean-loss Hessian with weight n_b / n_g
                    q.add_(v * h, alpha=float(n) / self.probes)


@register_method("hutchinson")
class Hutchinson(SensitivityMethod):
    """Second-order Taylor cost with a Hutchinson estimate of the group's Hessian diagonal."""

    def run(self, ctx):
        probes = int(ctx.options.get("hutchinson_probes", 1))
        if probes < 1:
            raise UserError(f"hutchinson_probes must be at least 1, got {probes}")
        gen = torch.Generator().manual_seed(int(ctx.options.get("seed", 0)))
        acc = _HutchinsonAccumulator(ctx, ctx.options.get("first_order", False), probes, gen)
        _gradient_pass(ctx, acc, create_graph=True, stage="hutchinson")
        return MethodResult(acc.costs, meta={"probes_per_batch": probes,
                                             "first_order": acc.first_order})


class _ImportanceAccumulator:
    """FairQuant importance maps, one group at a time, reduced when the group ends.

    ``I_g`` is averaged over the group's batches (FairQuant sums over batches that all contain
    every group; with group-homogeneous batches the groups have different batch counts, and the
    mean keeps groups comparable). The combined maps of FairQuant (``max``, ``mean``,
    ``balanced`` = max over groups of I_g divided by its share of the total mass) are built
    online: ``balanced = (Σ_g M_g)·max_g(I_g / M_g)`` with ``M_g = Σ_w I_g(w)``.
    """

    def __init__(self, ctx: ProfileContext, score: Callable):
        self.ctx = ctx
        self.score = score
        U, G = len(ctx.units), ctx.num_groups
        self.sums = np.zeros((U, G))       # Σ_{i∈u} I_{g,i}
        self.means = np.zeros((U, G))      # mean_{i∈u} I_{g,i} (FairQuant's unit score)
        self.comb_max = [torch.zeros_like(w) for w in ctx.weights]
        self.comb_sum = [torch.zeros_like(w) for w in ctx.weights]
        self.comb_bal = [torch.zeros_like(w) for w in ctx.weights]
        self.mass = 0.0
        self.groups_done = 0
        self._reset()

    def _reset(self):
        self.batches = 0
        self.maps = [torch.zeros_like(w) for w in self.ctx.weights]

    def add(self, g, n, loss, grads):
        self.batches += 1
        for m, w, gr in zip(self.maps, self.ctx.weights, grads):
            m.add_(self.score(w.detach(), gr))

    def finish(self, g: int) -> None:
        ctx = self.ctx
        slices = ctx.units.unit_slices()
        maps = [m / self.batches for m in self.maps]
        mass = float(sum(m.double().sum() for m in maps))
        for li, layer in enumerate(ctx.units.layers):
            sl = slices[layer.name]
            s = ctx.unit_sum(li, maps[li]).cpu().numpy()
            self.sums[sl, g] = s
            self.means[sl, g] = s / layer.per_channel if ctx.units.granularity == "channel" \
                else s / layer.numel
            torch.maximum(self.comb_max[li], maps[li], out=self.comb_max[li])
            self.comb_sum[li].add_(maps[li])
            if mass > 0:
                torch.maximum(self.comb_bal[li], maps[li] / mass, out=self.comb_bal[li])
        self.mass += mass
        self.groups_done += 1
        self._reset()

    def combined_unit_scores(self) -> dict[str, np.ndarray]:
        ctx = self.ctx
        out = {}
        for rule, maps, scale in (("max", self.comb_max, 1.0),
                                  ("mean", self.comb_sum, 1.0 / max(1, self.groups_done)),
                                  ("balanced", self.comb_bal, self.mass)):
            parts = []
            for li, layer in enumerate(ctx.units.layers):
                s = ctx.unit_sum(li, maps[li].abs()).cpu().numpy() * scale
                parts.append(s / (layer.per_channel if ctx.units.granularity == "channel"
                                  else layer.numel))
            out[f"scores_{rule}"] = np.concatenate(parts)
        return out


def _relative_errors(ctx: ProfileContext) -> np.ndarray:
    """``[U, K]``: ``‖δ_{u,k}‖² / ‖w_u‖²`` (0 for an all-zero unit)."""
    slices = ctx.units.unit_slices()
    out = np.zeros((len(ctx.units), len(ctx.bits)))
    for li, layer in enumerate(ctx.units.layers):
        sl = slices[layer.name]
        wn = ctx.unit_sum(li, ctx.weights[li] ** 2).cpu().numpy()
        for k, d in enumerate(ctx.deltas[li]):
            dn = ctx.unit_sum(li, d * d).cpu().numpy()
            out[sl, k] = np.divide(dn, wn, out=np.zeros_like(dn), where=wn > 0)
    return out


class _ImportanceMethod(SensitivityMethod):
    """``costs[u,g,k] = S_{u,g} · ‖δ_{u,k}‖²/‖w_u‖²`` with ``S_{u,g} = Σ_{i∈u} I_{g,i}``.

    The unit's *sum* (not FairQuant's mean) makes costs additive over units of different sizes,
    as the solvers' budgets need. FairQuant's own unit scores (means of the per-group and of the
    combined maps) are kept in the table as extra arrays: ``scores`` ``[U, G]`` and
    ``scores_max``/``scores_mean``/``scores_balanced`` ``[U]``, for the ``quantile`` baseline.
    """

    @staticmethod
    @abstractmethod
    def score(w: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        ...

    def run(self, ctx):
        acc = _ImportanceAccumulator(ctx, self.score)
        _gradient_pass(ctx, acc, stage=self.name)
        rel = _relative_errors(ctx)
        costs = acc.sums[:, :, None] * rel[:, None, :]
        extras = {"scores": acc.means, **acc.combined_unit_scores()}
        return MethodResult(costs, extras=extras,
                            meta={"importance": self.name, "cost": "sum_u(I_g) * |d|^2/|w|^2",
                                  "score_combine": list(COMBINE_RULES)})


@register_method("gradient")
class Gradient(_ImportanceMethod):
    """FairQuant's ``gradient`` importance, ``I_g = mean_b |∂ℓ_g/∂w|``."""

    @staticmethod
    def score(w, grad):
        return grad.abs()


@register_method("grape")
class Grape(_ImportanceMethod):
    """FairGRAPE's importance as FairQuant uses it, ``I_g = mean_b (w·∂ℓ_g/∂w)²``."""

    @staticmethod
    def score(w, grad):
        return (w * grad) ** 2


@register_method("measured")
class Measured(SensitivityMethod):
    """Quantize each layer alone at each bit-width and measure each group's mean-loss change on
    the calibration samples: ``U × K`` forward passes (the ground truth for layer granularity)."""

    layer_only = True
    needs_cache = True

    def _group_losses(self, ctx) -> np.ndarray:
        sums = torch.zeros(ctx.num_groups, dtype=torch.float64)
        with torch.no_grad():
            for g, x, y in ctx.calibration:
                sums[g] += F.cross_entropy(ctx.model(x), y, reduction="sum").double().cpu()
        counts = torch.as_tensor(ctx.calibration.group_counts, dtype=torch.float64)
        return (sums / counts.clamp(min=1)).numpy()

    def run(self, ctx):
        costs = ctx.empty_costs()
        base = self._group_losses(ctx)
        total = len(ctx.units.layers) * len(ctx.bits)
        done = 0
        for li, layer in enumerate(ctx.units.layers):
            for k, b in enumerate(ctx.bits):
                with quantized_layers(ctx.model, {layer.name: int(b)}, method=ctx.quantizer):
                    costs[li, :, k] = self._group_losses(ctx) - base
                done += 1
                ctx.report("measured", done, total, layer=layer.name, bits=int(b))
        return MethodResult(costs, meta={"base_group_loss": [float(v) for v in base]})


# ------------------------------------------------------------------ entry point
def _check_bits(bits) -> tuple[int, ...]:
    try:
        out = tuple(int(b) for b in bits)
        if any(float(b) != int(b) for b in bits):
            raise ValueError
    except (TypeError, ValueError):
        raise UserError(f"bits must be integers, got {bits!r}") from None
    if not out:
        raise UserError("bits must name at least one bit-width")
    check_bits(out, what="bits")
    return tuple(sorted(set(out)))


def profile(model: nn.Module, dataset, indices="train", *, method: str = "fisher",
            granularity: str = "channel", bits: Sequence[int] = DEFAULT_BITS,
            quantizer: str = "mse", pin="default", ties=None, calib: int | None = None,
            batch_size: int = 64, seed: int = 0, first_order: bool = False,
            hutchinson_probes: int = 1, allow_empty_groups: bool = False,
            model_name: str | None = None, callback: Callback | None = None
            ) -> SensitivityTable:
    """Profile ``model`` on ``dataset`` samples ``indices`` (index array or split name).

    method: a key of :data:`METHODS`. granularity: ``layer`` or ``channel``. bits: candidate
    bit-widths (2-8). quantizer: ``mse`` (fqopt's default) or ``maxabs`` (FairQuant's). pin/ties: recorded in the table's meta for
    the solvers (see :func:`~fqopt.units.discover_units`). calib: at most this many samples,
    stratified by group (None: all of ``indices``). first_order: add the signed ``ḡ·δ`` term
    to ``fisher``/``hutchinson``. allow_empty_groups: give a group without calibration samples
    zero costs instead of failing. callback: ``callback(stage, done, total, **info)``.

    Returns a :class:`~fqopt.sensitivity.SensitivityTable` with ``costs`` ``[U, G, K]`` in the
    order of ``discover_units(model, granularity)`` and ``dataset.group_names``.
    """
    started = time.perf_counter()
    impl = METHODS.get(method)()
    if granularity not in GRANULARITIES:
        raise UserError(f"unknown granularity {granularity!r}; expected one of "
                        f"{', '.join(GRANULARITIES)}")
    QUANTIZERS.get(quantizer)
    if impl.layer_only and granularity != "layer":
        raise UserError(f"sensitivity method {method!r} measures whole layers only; use "
                        f"--granularity layer (or another method for {granularity!r})")
    bits = _check_bits(bits)
    if isinstance(indices, str):
        indices = dataset.split(indices)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) == 0:
        raise UserError("no calibration samples: the index list is empty")
    idx = select_calibration(dataset.groups, indices, calib, seed)
    device = next(model.parameters()).device
    cal = Calibration(dataset, idx, batch_size=batch_size, seed=seed, device=device,
                      cache=impl.needs_cache)
    empty = [dataset.group_names[g] for g in range(dataset.num_groups)
             if cal.group_counts[g] == 0]
    if empty and not allow_empty_groups:
        raise UserError(f"calibration set has no samples of group(s) {', '.join(empty)} "
                        f"(attribute {dataset.attribute!r}, {len(idx)} samples); use more "
                        "calibration samples or allow empty groups")
    size = dataset.image_size
    units = discover_units(model, granularity, pin=pin, ties=ties, input_size=(3, size, size))
    named = dict(quantizable_layers(model))
    modules = [named[layer.name] for layer in units.layers]
    options = {"first_order": bool(first_order), "hutchinson_probes": int(hutchinson_probes),
               "seed": int(seed)}
    ctx = ProfileContext(model=model, units=units, calibration=cal, bits=bits,
                         quantizer=quantizer, group_names=list(dataset.group_names),
                         modules=modules, weights=[m.weight for m in modules], options=options,
                         callback=callback)

    # eval mode (BatchNorm statistics frozen) and gradients for the layer weights only;
    # everything is put back as it was, even after an error
    modes = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        model.eval()
        for p in flags:
            p.requires_grad_(False)
        for w in ctx.weights:
            w.requires_grad_(True)
        result = impl.run(ctx)
    finally:
        for m, mode in modes.items():
            m.training = mode
        for p, flag in flags.items():
            p.requires_grad_(flag)

    costs = result.costs
    costs[:, cal.group_counts == 0, :] = 0.0
    meta = {
        "model": model_name or type(model).__name__, "dataset": getattr(dataset, "name", "?"),
        "attribute": getattr(dataset, "attribute", "group"), "method": method,
        "granularity": granularity, "seed": int(seed), "fqopt_version": __version__,
        "quantizer": quantizer, "bits": list(bits), "calib_samples": int(len(idx)),
        "batch_size": int(batch_size), "batches": len(cal), "image_size": int(size),
        **units.to_meta(),   # shapes, kinds, pins, ties, float parameters, buffer bytes
        "method_info": result.meta, "seconds": round(time.perf_counter() - started, 3),
    }
    if result.extras:
        meta["extras"] = sorted(result.extras)
    return SensitivityTable(costs=costs, bits=np.array(bits), sizes=units.sizes,
                            units=units.names, groups=list(dataset.group_names),
                            group_counts=cal.group_counts, macs=units.macs, meta=meta,
                            extras=result.extras)
