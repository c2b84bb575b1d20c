"""BAQ: learnable bit-widths, trained with the weights, rounded by the solver (docs/design.md §4.7).

``refine(run, plan)`` starts from an :class:`~fqopt.plan.AllocationPlan` and learns one
continuous bit-width ``b_u`` per unit (a layer, or one output channel, as the plan's granularity)
together with the weights, then rounds the bit-widths under the exact budget with the allocation
solver and fine-tunes the weights at the rounded bits.

**Differentiable bits (FracBits-style).** With ``lo = clamp(⌊b⌋, b_min, b_max − 1)`` and
``α = b − lo ∈ [0, 1]``, the weight used in the forward pass is

    ŵ = (1 − α)·Q_lo(w) + α·Q_{lo+1}(w)      (each Q with a straight-through gradient to w)

so ``∂ŵ/∂w = 1`` and ``∂L/∂b = Σ (Q_{lo+1}(w) − Q_lo(w))·∂L/∂ŵ``: the task and fairness losses
move the bit-widths. At an integer ``b`` the forward pass is exactly ``Q_b(w)`` (what evaluation
applies) and the gradient is the right derivative, never zero. FairQuant's own BAQ builds
``w + stopgrad(ŵ − w)``, so its bit logits get no gradient from the task loss (docs/reference.md).

**Loss.** ``CE + λ_f·R_fair + ψ(g)``. ``R_fair`` is computed from the mean cross-entropy of each
group present in the batch (:data:`FAIRNESS_TERMS`: ``range`` = max − min as FairQuant,
``worst`` = max, ``cvar:α`` = mean of the ⌈α·P⌉ largest of the P present groups, ``dro:η`` =
Group DRO with exponentiated-gradient group weights). ``g = (Σ_u a_u·b_u − cap) / Σ_u a_u`` is
the budget violation in average bits (``a_u`` = the unit's weights, or MACs × activation bits for
a ``bops`` budget) and ``ψ`` the augmented-Lagrangian (PHR) penalty
``(max(0, μ + ρ·g)² − μ²) / (2ρ)`` with the multiplier updated after every step,
``μ ← max(0, μ + ρ·g)``; so the bits settle on the budget instead of drifting up.

**Rounding.** The learned ``b*`` are rounded by :func:`fqopt.solvers.solve` under the exact
budget. The per-unit cost of choosing ``x`` bits is ``a_u·(4^(b*_u − x) − 1)/ln 4``: if unit u's
loss behaves like the quantization-noise model ``c_u·4^(−b)`` and ``b*_u`` is where its marginal
gain equals the price of a bit (``a_u`` per bit, up to the common multiplier), stationarity fixes
``c_u`` and this is the loss change of moving from ``b*_u`` to ``x``. It is convex and asymmetric
(one bit below ``b*`` costs four times what one bit above saves), and it spends the whole budget.
The result is a solver plan: its ``avg_bits`` (or size, or BOPs) is within the budget exactly as
the solver's ``budget_used`` reports.

**Fine-tune.** A short fixed-bit fine-tune (straight-through estimator, weights only) at the
rounded bits follows. Pinned units keep the plan's bits throughout.

**Runs and resumption.** CUDA with bf16 autocast when present, CPU otherwise. A checkpoint is
written after every epoch of both phases (``baq_state.pt``, ``finetune_state.pt``); a new call
with the same plan and settings continues where the last one stopped (also with more epochs);
a checkpoint of another plan or other settings is a :class:`~fqopt.errors.UserError` unless
``force``. Outputs in ``out_dir``: ``plan.json`` (the refined plan), ``model.pt`` (the refined FP
weights; with the plan they give the quantized model, see :func:`load_refined`), the
FairnessReports of the static and refined plans on the search and test splits, ``history.json``
and ``refine.json`` (a summary).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from fqopt.errors import UserError
from fqopt.quantizers import _EPS, METHODS, channel_maxabs, fake_quantize

__all__ = ["refine", "load_refined", "RefineResult", "BitWidths", "fractional_fake_quantize",
           "FairnessTerm", "FAIRNESS_TERMS", "distillation_loss", "register_fairness",
           "make_fairness",
           "group_losses", "AugmentedLagrangian", "rounding_costs", "plan_fingerprint",
           "measure_step_times", "fixed_bit_weights", "fixed_fake_quantize_ste",
           "step_time_ratio"]

STATE_SCHEMA = "fqopt.baq_state/1"
SUMMARY_SCHEMA = "fqopt.refine/1"
MIN_BITS, MAX_BITS = 2, 8


# =========================================================================== differentiable bits
def _quantize_at(w: torch.Tensor, maxabs: torch.Tensor, bits: torch.Tensor,
                 method: str) -> torch.Tensor:
    """Q_bits(w) for real-valued integer ``bits`` broadcastable to ``[C, 1, ...]``, no graph.

    The same operations as :func:`fqopt.quantizers.fake_quantize` (so the values are identical)
    without its per-call validation, and with ``maxabs`` computed once for both bit-widths."""
    if method != "maxabs":
        return fake_quantize(w, bits.expand(w.shape[0]) if bits.dim() == 0 else bits.reshape(-1),
                             method)
    qm = torch.pow(2.0, bits - 1) - 1
    scale = maxabs / qm
    return torch.clamp(torch.round(w / scale), -qm, qm) * scale


def _maxabs(w: torch.Tensor) -> torch.Tensor:
    return torch.clamp(channel_maxabs(w), min=_EPS)


def fractional_fake_quantize(w: torch.Tensor, bits: torch.Tensor, method: str = "maxabs", *,
                             min_bits: int = MIN_BITS, max_bits: int = MAX_BITS) -> torch.Tensor:
    """FracBits interpolation between the quantizers at ``⌊b⌋`` and ``⌊b⌋ + 1``.

    w: weight, output channels first. bits: real bit-widths, a 0-d tensor (one per layer) or
    ``[out_channels]``, within ``[min_bits, max_bits]``. Returns ŵ (same shape as w) with
    ``∂ŵ/∂w = 1`` (straight-through) and ``∂ŵ/∂b = Q_{lo+1}(w) − Q_lo(w)`` per channel.
    """
    b = bits.to(w.dtype)
    if b.dim():
        b = b.reshape((w.shape[0],) + (1,) * (w.dim() - 1))
    top = max(int(min_bits), int(max_bits) - 1)
    lo = torch.clamp(torch.floor(b.detach()), int(min_bits), top)
    hi = torch.clamp(lo + 1, max=int(max_bits))
    wd = w.detach()
    m = _maxabs(wd)
    q_lo = _quantize_at(wd, m, lo, method)
    q_hi = _quantize_at(wd, m, hi, method)
    # q_lo and q_hi carry no graph; ŵ = w + (q_lo − w)ᵀ + α·(q_hi − q_lo) with α = b − lo
    return w + (q_lo - w).detach() + (b - lo) * (q_hi - q_lo)


def fixed_fake_quantize_ste(w: torch.Tensor, bits, method: str = "maxabs") -> torch.Tensor:
    """Q_bits(w) with a straight-through gradient (int or ``[out_channels]`` bits), computed by
    the same kernel as :func:`fractional_fake_quantize` so step times compare fairly."""
    wd = w.detach()
    b = torch.as_tensor(bits, dtype=w.dtype, device=w.device)
    if b.dim():
        b = b.reshape((w.shape[0],) + (1,) * (w.dim() - 1))
    return w + (_quantize_at(wd, _maxabs(wd), b, method) - w).detach()


class BitWidths(nn.Module):
    """Continuous bit-widths of a :class:`~fqopt.units.UnitSet`, one real per unit.

    A learnable layer holds a parameter of shape ``[]`` (layer granularity) or ``[out_channels]``
    (channel); a fixed layer (pinned) keeps integer bits ``[out_channels]`` as a buffer.
    ``init``: ``[U]`` starting bits in ``units.names`` order. ``fixed``: layer names that stay at
    their starting bits. ``budget_weights``: ``[U]`` weight ``a_u`` of each unit in the budget.
    """

    def __init__(self, units, init, *, fixed=(), budget_weights=None, min_bits: int = MIN_BITS,
                 max_bits: int = MAX_BITS):
        super().__init__()
        init = np.asarray(init, dtype=np.float64).reshape(-1)
        if init.shape != (len(units),):
            raise UserError(f"{init.size} starting bit-widths for {len(units)} units")
        self.units = units
        self.min_bits, self.max_bits = int(min_bits), int(max_bits)
        self.layer_names = list(units.layer_names)
        self.slices = units.unit_slices()
        fixed = set(fixed)
        self.learnable = [name not in fixed for name in self.layer_names]
        self.params = nn.ParameterList()
        self._param_of: dict[str, int] = {}
        for name, learn in zip(self.layer_names, self.learnable):
            b = torch.as_tensor(init[self.slices[name]], dtype=torch.float32)
            if learn:
                value = b[0].clone() if units.granularity == "layer" else b.clone()
                self._param_of[name] = len(self.params)
                self.params.append(nn.Parameter(value))
            else:
                n = units.layer(name).out_channels
                full = b.expand(n).clone() if units.granularity == "layer" else b.clone()
                self.register_buffer(_buffer_name(name), full.round().to(torch.int64))
        weights = np.asarray(units.sizes if budget_weights is None else budget_weights,
                             dtype=np.float64)
        self.register_buffer("budget_weights", torch.as_tensor(weights, dtype=torch.float64))
        self.project_()

    # ------------------------------------------------------------------ views
    def layer_bits(self, name: str) -> torch.Tensor:
        """Real bits of layer ``name``: ``[]`` or ``[out_channels]`` (learnable), or int64
        ``[out_channels]`` (fixed)."""
        if name in self._param_of:
            return self.params[self._param_of[name]]
        return getattr(self, _buffer_name(name))

    def unit_bits(self) -> torch.Tensor:
        """``[U]`` float64 bits in ``units.names`` order (differentiable in the parameters)."""
        parts = []
        for name in self.layer_names:
            b = self.layer_bits(name).to(torch.float64).reshape(-1)
            if name not in self._param_of and self.units.granularity == "layer":
                b = b[:1]
            parts.append(b)
        return torch.cat(parts)

    def average_bits(self) -> torch.Tensor:
        """``Σ_u a_u·b_u / Σ_u a_u`` (0-d float64, differentiable)."""
        a = self.budget_weights
        return (a * self.unit_bits()).sum() / a.sum()

    def learnable_mask(self) -> np.ndarray:
        """``[U]`` bool: units whose bits are learned."""
        mask = np.zeros(len(self.units), dtype=bool)
        for name, learn in zip(self.layer_names, self.learnable):
            mask[self.slices[name]] = learn
        return mask

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp every learnable bit-width into ``[min_bits, max_bits]`` (projected gradient)."""
        for p in self.params:
            p.clamp_(self.min_bits, self.max_bits)

    # ------------------------------------------------------------------ weights
    def quantized_weights(self, modules: dict[str, nn.Module], method: str = "maxabs"
                          ) -> dict[str, torch.Tensor]:
        """``{'<layer>.weight': ŵ}`` for :func:`torch.func.functional_call`: fractional for
        learnable layers, straight-through fixed-bit for the others."""
        out = {}
        for name in self.layer_names:
            w = modules[name].weight
            if name in self._param_of:
                out[f"{name}.weight"] = fractional_fake_quantize(
                    w, self.layer_bits(name), method, min_bits=self.min_bits,
                    max_bits=self.max_bits)
            else:
                out[f"{name}.weight"] = fixed_fake_quantize_ste(w, self.layer_bits(name),
                                                                method)
        return out


def _buffer_name(layer: str) -> str:
    return "fixed_" + layer.replace(".", "__")


def fixed_bit_weights(modules: dict[str, nn.Module], layer_bits: dict, method: str = "maxabs"
                      ) -> dict[str, torch.Tensor]:
    """``{'<layer>.weight': Q(w)}`` with straight-through gradients (fixed-bit training)."""
    return {f"{name}.weight": fixed_fake_quantize_ste(m.weight, layer_bits[name], method)
            for name, m in modules.items()}


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """Per-sample knowledge-distillation loss ``[n]``: T²·KL(p_teacher,T ‖ p_student,T), with
    p_·,T = softmax(logits / T) (Hinton et al.; T² keeps the gradient scale of T = 1).

    logits, teacher_logits: ``[n, C]``; the teacher's side carries no gradient.
    """
    t = float(temperature)
    log_p = nn.functional.log_softmax(teacher_logits.detach() / t, dim=1)
    log_q = nn.functional.log_softmax(logits / t, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1) * (t * t)


# =========================================================================== fairness terms
def group_losses(per_sample: torch.Tensor, groups: torch.Tensor, num_groups: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss of each group in a batch: ``([G] losses, [G] bool present)``.

    per_sample: ``[n]`` losses; groups: ``[n]`` int group indices. Absent groups get loss 0.
    """
    g = groups.to(per_sample.device)
    sums = torch.zeros(num_groups, dtype=per_sample.dtype, device=per_sample.device)
    sums = sums.index_add(0, g, per_sample)
    counts = torch.bincount(g, minlength=num_groups).to(per_sample.dtype)
    present = counts > 0
    return sums / counts.clamp(min=1), present


class FairnessTerm(ABC):
    """``R_fair`` from the per-group mean losses of a batch. Stateless terms ignore the state."""

    name: str = ""

    def __init__(self, num_groups: int, arg: float | None = None):
        self.num_groups = int(num_groups)

    @abstractmethod
    def __call__(self, losses: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """losses ``[G]`` (differentiable), present ``[G]`` bool -> a 0-d tensor."""

    @property
    def spec(self) -> str:
        return self.name

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


FAIRNESS_TERMS: dict[str, type[FairnessTerm]] = {}


def register_fairness(name: str):
    """Class decorator: make a :class:`FairnessTerm` available as ``fairness=name[:arg]``."""

    def deco(cls):
        cls.name = name
        FAIRNESS_TERMS[name] = cls
        return cls

    return deco


@register_fairness("range")
class RangeTerm(FairnessTerm):
    """max_g ℓ_g − min_g ℓ_g over the groups present (FairQuant's BAQ); 0 with fewer than two."""

    def __call__(self, losses, present):
        if int(present.sum()) < 2:
            return losses.sum() * 0.0
        p = losses[present]
        return p.max() - p.min()


@register_fairness("worst")
class WorstTerm(FairnessTerm):
    """max_g ℓ_g over the groups present."""

    def __call__(self, losses, present):
        return losses[present].max()


@register_fairness("cvar")
class CVaRTerm(FairnessTerm):
    """Mean of the ⌈α·P⌉ largest losses of the P groups present (``cvar:α``, default α = 0.5)."""

    def __init__(self, num_groups, arg=None):
        super().__init__(num_groups)
        self.alpha = 0.5 if arg is None else float(arg)
        if not 0.0 < self.alpha <= 1.0:
            raise UserError(f"fairness 'cvar:{arg}': α must lie in (0, 1]")

    @property
    def spec(self):
        return f"cvar:{self.alpha:g}"

    def __call__(self, losses, present):
        p = losses[present]
        k = max(1, math.ceil(self.alpha * p.numel() - 1e-9))
        return torch.topk(p, k).values.mean()


@register_fairness("dro")
class GroupDROTerm(FairnessTerm):
    """Group DRO (Sagawa et al. 2020): weights ``q_g ∝ q_g·exp(η·ℓ_g)`` updated after each batch
    for the groups present; the term is ``Σ q_g ℓ_g / Σ q_g`` over them (``dro:η``, default
    η = 0.1)."""

    def __init__(self, num_groups, arg=None):
        super().__init__(num_groups)
        self.eta = 0.1 if arg is None else float(arg)
        if not self.eta > 0:
            raise UserError(f"fairness 'dro:{arg}': η must be positive")
        self.q = torch.full((self.num_groups,), 1.0 / self.num_groups, dtype=torch.float64)

    @property
    def spec(self):
        return f"dro:{self.eta:g}"

    def __call__(self, losses, present):
        with torch.no_grad():
            step = torch.where(present.cpu(), self.eta * losses.detach().double().cpu(),
                               torch.zeros((), dtype=torch.float64))
            q = self.q * torch.exp(step - step.max())
            self.q = q / q.sum()
        w = (self.q.to(losses.device, losses.dtype) * present.to(losses.dtype))
        return (w * losses).sum() / w.sum()

    def state_dict(self):
        return {"q": self.q.clone()}

    def load_state_dict(self, state):
        if "q" in state:
            self.q = state["q"].to(torch.float64).clone()


def make_fairness(spec: str, num_groups: int) -> FairnessTerm:
    """A fairness term from ``name`` or ``name:arg`` (see :data:`FAIRNESS_TERMS`)."""
    name, _, arg = str(spec).strip().partition(":")
    name = name.strip().lower()
    if name not in FAIRNESS_TERMS:
        raise UserError(f"unknown fairness term {spec!r}; expected one of "
                        f"{', '.join(FAIRNESS_TERMS)} (cvar and dro take ':value')")
    if arg and name in ("range", "worst"):
        raise UserError(f"fairness term {name!r} takes no parameter, got {spec!r}")
    value = None
    if arg:
        try:
            value = float(arg)
        except ValueError:
            raise UserError(f"fairness {spec!r}: {arg!r} is not a number") from None
    return FAIRNESS_TERMS[name](num_groups, value)


# =========================================================================== budget
@dataclass
class AugmentedLagrangian:
    """PHR augmented Lagrangian for one inequality ``g ≤ 0``: penalty
    ``(max(0, μ + ρ·g)² − μ²)/(2ρ)`` (gradient ``max(0, μ + ρg)·∇g``), update
    ``μ ← max(0, μ + ρ·g)``. ``rho = 0`` switches the term off."""

    rho: float
    mu: float = 0.0

    def penalty(self, g: torch.Tensor) -> torch.Tensor:
        if self.rho <= 0:
            return g * 0.0
        return (torch.clamp(self.mu + self.rho * g, min=0.0) ** 2 - self.mu ** 2) / (2 * self.rho)

    def update(self, g: float) -> None:
        if self.rho > 0:
            self.mu = max(0.0, self.mu + self.rho * float(g))


def rounding_costs(continuous: np.ndarray, bits, weights: np.ndarray) -> np.ndarray:
    """``[U, 1, K]`` solver costs of rounding unit u from ``continuous[u]`` bits to ``bits[k]``:
    ``weights[u]·(4^(b*_u − bits[k]) − 1)/ln 4`` (see the module docstring)."""
    b = np.asarray(continuous, dtype=np.float64).reshape(-1, 1)
    k = np.asarray(bits, dtype=np.float64).reshape(1, -1)
    a = np.asarray(weights, dtype=np.float64).reshape(-1, 1)
    return (a * np.expm1((b - k) * math.log(4.0)) / math.log(4.0))[:, None, :]


# =========================================================================== results
@dataclass
class RefineResult:
    """What :func:`refine` returns.

    ``plan``: the refined, solver-rounded plan (``plan.avg_bits`` within the budget);
    ``static_plan``: the plan refinement started from; ``checkpoint``: refined FP weights
    (state dict; with ``plan`` they give the quantized model); ``continuous_bits``: ``[U]``
    learned bits before rounding; ``rounding``: the solver's record (status, objective,
    ``budget_used``, ...); ``history``: one dict per epoch of both phases; reports: FairnessReports
    on the search and test splits (None when ``evaluate=False``).
    """

    plan: object
    static_plan: object
    out_dir: Path
    checkpoint: Path
    plan_path: Path
    budget: dict
    continuous_bits: np.ndarray
    rounding: dict
    history: list[dict] = field(default_factory=list)
    report_search: object = None
    report_test: object = None
    static_report_search: object = None
    static_report_test: object = None
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """A JSON-able record (what ``refine.json`` holds)."""
        def rep(r):
            return None if r is None else {k: r.to_dict()[k] for k in
                                           ("accuracy", "avg_acc", "worst_acc", "acc_gap")}
        return {"schema": SUMMARY_SCHEMA, "out_dir": str(self.out_dir),
                "budget": self.budget, "settings": self.settings,
                "static": {"avg_bits": self.static_plan.avg_bits,
                           "size_bytes": self.static_plan.size_bytes,
                           "search": rep(self.static_report_search),
                           "test": rep(self.static_report_test)},
                "refined": {"avg_bits": self.plan.avg_bits, "size_bytes": self.plan.size_bytes,
                            "search": rep(self.report_search), "test": rep(self.report_test)},
                "rounding": self.rounding,
                "step_time_ratio": step_time_ratio(self.history)}


def step_time_ratio(history: list[dict]) -> float | None:
    """Mean refinement step time over mean fixed-bit fine-tune step time (same batch size)."""
    a = [h["step_seconds"] for h in history if h.get("phase") == "bits" and h.get("step_seconds")]
    b = [h["step_seconds"] for h in history if h.get("phase") == "finetune"
         and h.get("step_seconds")]
    if not a or not b:
        return None
    return float(np.mean(a) / np.mean(b))


def plan_fingerprint(plan) -> str:
    """Hash of what a plan assigns (model, granularity, shapes, bits): 16 hex digits."""
    d = {"model": plan.model, "granularity": plan.granularity, "shapes": plan.shapes,
         "assignments": {k: (int(v) if isinstance(v, (int, np.integer)) else [int(x) for x in v])
                         for k, v in plan.assignments.items()}}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# =========================================================================== refine
def refine(run, plan, *, budget: float | None = None, budget_kind: str | None = None,
           fairness: str = "range", lambda_fair: float = 0.5, lambda_budget: float = 1.0,
           epochs: int = 3, finetune_epochs: int = 1, lr: float = 1e-4, bit_lr: float = 0.05,
           weight_decay: float = 0.0, batch_size: int = 64, steps_per_epoch: int | None = None,
           balanced: bool = False, augment: bool = True, bits=None, pin="plan",
           distill: float = 0.0, distill_temperature: float = 1.0,
           quantizer: str | None = None, solver: str = "lagrange", seed: int = 0, device="auto",
           out_dir=None, resume: bool = True, force: bool = False, allow_over_budget: bool = False,
           evaluate: bool = True, callback: Callable | None = None) -> RefineResult:
    """BAQ refinement of ``plan`` on ``run`` (a :class:`~fqopt.runs.Run` or a run folder).

    plan: an AllocationPlan or a plan JSON path, validated against the run's model.
    budget / budget_kind: the budget to end within (``avg_bits`` parameter-weighted average bits,
        ``size_bytes`` or ``bops``); default: the plan's recorded budget, else its own avg_bits.
        A plan that already exceeds the budget is a UserError unless ``allow_over_budget`` (then
        the budget term pulls it down); a budget below what the pins and the smallest bit-width
        allow is a UserError naming the smallest feasible value.
    fairness: ``range`` | ``worst`` | ``cvar[:α]`` | ``dro[:η]``; lambda_fair: its weight λ_f.
    lambda_budget: ρ of the augmented-Lagrangian budget term (0: no budget term while learning;
        the final rounding still meets the budget).
    epochs: epochs of joint bit/weight training; finetune_epochs: fixed-bit epochs after rounding.
    steps_per_epoch: cap on the steps of one epoch (None: one pass over the train split).
    lr: weight learning rate (AdamW); bit_lr: bit-width learning rate (Adam, bits per step).
    bits: candidate bit-widths for rounding (default: the plan's ``bits``; for a uniform plan
        2,3,4,6,8); the learned bits range over ``[min(bits), max(bits)]``.
    balanced: group-balanced sampling; augment: flips and right-angle rotations.
    distill: weight α ∈ [0, 1] of knowledge distillation from the run's FP model: each sample's
        loss is (1 − α)·CE + α·T²·KL(p_FP,T ‖ p_T) at temperature ``distill_temperature`` T
        (the fairness term then ranges over these per-group losses); 0: plain cross-entropy.
    pin: ``"plan"`` (the layers in ``plan.meta['pinned']``, else the default stem and head),
        ``"none"``, or layer names; pinned layers keep the plan's bits and are not learned.
    quantizer: ``maxabs`` | ``mse``; None: the plan's own (``plan.quantizer``); the refined plan
        records it. solver: back-end for the rounding (an unknown name fails before any work).
    out_dir: where checkpoints and outputs go (default ``RUN/refined/<plan name>``).
    resume: continue from a checkpoint of the same plan and settings in ``out_dir``.
    force: discard a checkpoint of another plan or other settings and overwrite outputs.
    evaluate: compute the FairnessReports of the static and refined plans (search, test).
    callback: ``callback(stage, done, total, **info)`` progress reports.

    Returns a :class:`RefineResult`; writes ``out_dir/plan.json``, ``model.pt``, the reports,
    ``history.json`` and ``refine.json``.
    """
    for name, v in (("epochs", epochs), ("finetune_epochs", finetune_epochs)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise UserError(f"{name} must be an integer ≥ 0, got {v!r}")
    session, settings, plan_name = _prepare(
        run, plan, budget=budget, budget_kind=budget_kind, fairness=fairness,
        lambda_fair=lambda_fair, lambda_budget=lambda_budget, lr=lr, bit_lr=bit_lr,
        weight_decay=weight_decay, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
        balanced=balanced, augment=augment, distill=distill,
        distill_temperature=distill_temperature,
        bits=bits, pin=pin, quantizer=quantizer, solver=solver, seed=seed, device=device,
        allow_over_budget=allow_over_budget)
    out_dir = Path(out_dir) if out_dir is not None else (
        session.run.path / "refined" / (plan_name or f"plan-{settings['plan'][:10]}"))
    return session.run_all(out_dir=out_dir, settings=settings, epochs=int(epochs),
                           finetune_epochs=int(finetune_epochs), resume=resume, force=force,
                           evaluate=evaluate, callback=callback)


def finished_refinement(out_dir) -> bool:
    """Whether ``out_dir`` holds a finished refinement (``refine.json`` and its outputs)."""
    out_dir = Path(out_dir)
    return (out_dir / "refine.json").is_file() and any(
        (out_dir / n).exists() for n in ("plan.json", "model.pt"))


def measure_step_times(run, plan, *, steps: int = 10, **options) -> dict:
    """Seconds per step of BAQ refinement and of fixed-bit fine-tuning of ``plan`` on ``run``,
    alternated on the same batches (medians over ``steps`` steps each, after one warm-up).

    ``options``: :func:`refine`'s keyword arguments that shape a step (budget, fairness,
    lambda_fair, lambda_budget, lr, bit_lr, batch_size, bits, pin, quantizer, seed, device, ...).
    Returns ``{"steps", "refine_step_s", "fixed_step_s", "ratio"}``; nothing is written.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"steps must be a positive integer, got {steps!r}")
    session, settings, _ = _prepare(run, plan, **options)
    return session.measure_steps(settings, steps)


_PREPARE_DEFAULTS = dict(budget=None, budget_kind=None, fairness="range", lambda_fair=0.5,
                         lambda_budget=1.0, lr=1e-4, bit_lr=0.05, weight_decay=0.0,
                         batch_size=64, steps_per_epoch=None, balanced=False, augment=True,
                         distill=0.0, distill_temperature=1.0, bits=None, pin="plan",
                         quantizer=None, solver="lagrange", seed=0, device="auto",
                         allow_over_budget=False)


def _prepare(run, plan, **options):
    """Validate the options, open the run and the plan: ``(session, settings, plan name)``."""
    from fqopt.evaluation import resolve_device
    from fqopt.plan import AllocationPlan
    from fqopt.runs import Run

    unknown = sorted(set(options) - set(_PREPARE_DEFAULTS))
    if unknown:
        raise UserError(f"unknown refine option(s) {unknown}")
    o = {**_PREPARE_DEFAULTS, **options}
    _check_settings(fairness=o["fairness"], lambda_fair=o["lambda_fair"],
                    lambda_budget=o["lambda_budget"], lr=o["lr"], bit_lr=o["bit_lr"],
                    weight_decay=o["weight_decay"], batch_size=o["batch_size"],
                    steps_per_epoch=o["steps_per_epoch"], quantizer=o["quantizer"],
                    solver=o["solver"], distill=o["distill"],
                    distill_temperature=o["distill_temperature"])
    run = run if isinstance(run, Run) else Run.open(run)
    plan_name, source = None, f"for {getattr(plan, 'model', '?')!r}"
    if isinstance(plan, (str, os.PathLike)):
        plan_name, source = Path(plan).stem, str(plan)
        plan = AllocationPlan.load(plan)
    if not isinstance(plan, AllocationPlan):
        raise UserError(f"plan must be an AllocationPlan or a plan JSON path, "
                        f"got {type(plan).__name__}")
    if o["quantizer"] is None:
        o["quantizer"] = plan.quantizer
    session = _Session(run, plan, device=resolve_device(o["device"]), budget=o["budget"],
                       budget_kind=o["budget_kind"], bits=o["bits"], pin=o["pin"],
                       quantizer=o["quantizer"], allow_over_budget=o["allow_over_budget"],
                       source=source)
    settings = {
        "plan": plan_fingerprint(plan), "budget": session.budget_spec,
        "fairness": make_fairness(o["fairness"], 2).spec,
        "lambda_fair": float(o["lambda_fair"]), "lambda_budget": float(o["lambda_budget"]),
        "lr": float(o["lr"]), "bit_lr": float(o["bit_lr"]),
        "weight_decay": float(o["weight_decay"]), "batch_size": int(o["batch_size"]),
        "steps_per_epoch": None if o["steps_per_epoch"] is None else int(o["steps_per_epoch"]),
        "balanced": bool(o["balanced"]), "augment": bool(o["augment"]),
        "bits": session.bits.tolist(), "pinned": sorted(session.pinned),
        "quantizer": o["quantizer"], "solver": o["solver"], "seed": int(o["seed"]),
    }
    if o["distill"] > 0:   # only then: checkpoints written without distillation still resume
        settings.update(distill=float(o["distill"]),
                        distill_temperature=float(o["distill_temperature"]))
    return session, settings, plan_name


def _check_settings(*, fairness, lambda_fair, lambda_budget, lr, bit_lr, weight_decay,
                    batch_size, steps_per_epoch, quantizer, solver, distill=0.0,
                    distill_temperature=1.0):
    make_fairness(fairness, 2)
    if isinstance(distill, bool) or not isinstance(distill, (int, float)) \
            or not 0 <= distill <= 1:
        raise UserError(f"distill must be a number in [0, 1], got {distill!r}")
    if isinstance(distill_temperature, bool) or not isinstance(distill_temperature, (int, float)) \
            or not math.isfinite(distill_temperature) or distill_temperature <= 0:
        raise UserError(f"distill_temperature must be a positive number, "
                        f"got {distill_temperature!r}")
    for name, v in (("lambda_fair", lambda_fair), ("lambda_budget", lambda_budget),
                    ("bit_lr", bit_lr), ("weight_decay", weight_decay)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise UserError(f"{name} must be a number ≥ 0, got {v!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise UserError(f"lr must be a positive number, got {lr!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    if steps_per_epoch is not None and (isinstance(steps_per_epoch, bool) or not isinstance(
            steps_per_epoch, (int, np.integer)) or steps_per_epoch < 1):
        raise UserError(f"steps_per_epoch must be a positive integer or None, "
                        f"got {steps_per_epoch!r}")
    if quantizer is not None and quantizer not in METHODS:
        raise UserError(f"unknown quantizer {quantizer!r}; expected one of {', '.join(METHODS)}")
    from fqopt.solvers import get_solver

    get_solver(solver)  # an unknown back-end fails here, not after the training epochs


class _Session:
    """One refinement: the run's model, the plan's units, pins, budget and candidate bits."""

    def __init__(self, run, plan, *, device, budget, budget_kind, bits, pin, quantizer,
                 allow_over_budget, source="<plan>"):
        from fqopt.plan import check_bits
        from fqopt.profiling import DEFAULT_BITS
        from fqopt.solvers import BUDGET_KINDS
        from fqopt.units import default_pins, discover_units, quantizable_layers

        self.run, self.static_plan, self.device, self.quantizer = run, plan, device, quantizer
        self.dataset = run.dataset()
        model = run.model()
        size = self.dataset.image_size
        self.units = discover_units(model, plan.granularity, pin="none",
                                    input_size=(3, size, size))
        plan.validate(self.units, model=run.model_name)
        self.init_bits = plan.unit_bits(self.units)
        self.model = model.to(device)
        named = dict(quantizable_layers(self.model))
        self.modules = {name: named[name] for name in self.units.layer_names}

        # pinned layers keep the plan's bits
        if isinstance(pin, str) and pin == "plan":
            recorded = (plan.meta or {}).get("pinned")
            pin_names = list(recorded) if recorded is not None else default_pins(model)
        elif pin is None or (isinstance(pin, str) and pin == "none"):
            pin_names = []
        else:
            pin_names = [p.strip() for p in pin.split(",")] if isinstance(pin, str) else list(pin)
        unknown = [p for p in pin_names if not self.units.has_layer(p)]
        if unknown:
            raise UserError(f"cannot pin {unknown}: not a Conv2d/Linear layer of "
                            f"{run.model_name}")
        self.pinned = set(pin_names)

        # candidate bits: the plan's (a uniform plan lists only its own bits, so it gets the
        # profiling defaults), plus every bit-width the plan uses
        if bits is None:
            uniform = str(plan.objective or "").startswith("uniform")
            cands = set(int(b) for b in plan.bits) | (set(DEFAULT_BITS) if uniform else set())
        else:
            cands = set(int(b) for b in bits)
            check_bits(list(cands), what="candidate bit-width")
        cands |= set(int(b) for b in np.unique(self.init_bits))
        self.bits = np.array(sorted(cands), dtype=np.int64)
        check_bits(self.bits.tolist(), what="candidate bit-width")

        # the budget
        recorded = plan.budget if isinstance(plan.budget, dict) else None
        kind = budget_kind or (recorded or {}).get("kind") or "avg_bits"
        if kind not in BUDGET_KINDS:
            raise UserError(f"unknown budget kind {kind!r}; expected one of "
                            f"{', '.join(BUDGET_KINDS)}")
        self.budget_kind = kind
        self.problem = self._problem(np.zeros((len(self.units), 1, len(self.bits))), 0.0)
        plan_usage = self.problem.budget_used(self.init_bits)
        budget_given = budget is not None
        if budget is None:
            if recorded and recorded.get("kind") == kind and recorded.get("value") is not None:
                budget = float(recorded["value"])
            else:
                budget = plan_usage
        try:
            budget = float(budget)
        except (TypeError, ValueError):
            raise UserError(f"budget must be a number, got {budget!r}") from None
        if not math.isfinite(budget) or budget <= 0:
            raise UserError(f"budget must be a positive number, got {budget}")
        self.problem = self.problem.with_budget(budget)
        self.budget = budget
        if not self.problem.is_budget_feasible:
            raise UserError(f"refine: {self.problem.infeasibility_message()}")
        if self.problem.usage(self.init_bits) > self.problem.cap and not allow_over_budget:
            origin = "given" if budget_given else "recorded in the plan"
            raise UserError(f"plan {source} uses {plan_usage:.6g} {kind}, over the budget "
                            f"{budget:.6g} {kind} ({origin}); allocate a plan within the budget "
                            "or pass --allow-over-budget to let refinement pull it down")
        # a_u: what one bit of unit u spends (weights; MACs × activation bits for BOPs)
        self.budget_weights = (self.units.macs * self.problem.activation_bits
                               if kind == "bops" else self.units.sizes).astype(np.float64)

    @property
    def budget_spec(self) -> dict:
        return {"kind": self.budget_kind, "value": self.budget}

    def _problem(self, costs, budget):
        from fqopt.solvers import AllocationProblem
        slices = self.units.unit_slices()
        pins = {}
        for layer in getattr(self, "pinned", ()):
            for u in range(slices[layer].start, slices[layer].stop):
                pins[u] = int(self.init_bits[u])
        overhead = self.units.overhead_bytes
        return AllocationProblem(costs=costs, bits=self.bits, sizes=self.units.sizes,
                                 budget=budget, budget_kind=self.budget_kind,
                                 objective="balanced", macs=self.units.macs, pins=pins,
                                 unit_names=self.units.names, group_names=["rounding"],
                                 size_overhead=overhead, source="BAQ rounding")

    # ------------------------------------------------------------------ driver
    def run_all(self, *, out_dir, settings, epochs, finetune_epochs, resume, force, evaluate,
                callback):
        from fqopt._io import write_json

        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"refine output {out_dir} is a file; --out names a folder")
        bits_path, ft_path = out_dir / "baq_state.pt", out_dir / "finetune_state.pt"
        outputs = [out_dir / n for n in ("plan.json", "model.pt")]
        out_dir.mkdir(parents=True, exist_ok=True)
        if force:
            saved = None
            for p in (bits_path, ft_path):
                p.unlink(missing_ok=True)
        else:
            saved = _load_state(bits_path, settings, resume)
            if saved is None and any(p.exists() for p in outputs):
                raise UserError(f"refine output {out_dir} already holds a refinement without a "
                                "checkpoint to resume; pass --force to overwrite it")
        if saved is not None and saved["epoch"] > epochs:
            raise UserError(f"refine checkpoint {bits_path} has {saved['epoch']} epochs, more "
                            f"than the {epochs} asked for; pass --force to start over")

        torch.manual_seed(int(settings["seed"]))
        num_groups = self.dataset.num_groups
        fair = make_fairness(settings["fairness"], num_groups)
        bw = self._bit_widths()
        opt = self._optimizer(settings, bw)
        al = AugmentedLagrangian(rho=settings["lambda_budget"])
        history: list[dict] = []
        start = 0
        if saved is not None:
            self.model.load_state_dict(saved["model"])
            bw.load_state_dict(saved["bits"])
            opt.load_state_dict(saved["optimizer"])
            al.mu = float(saved["mu"])
            fair.load_state_dict(saved["fairness"])
            history = list(saved["history"])
            start = int(saved["epoch"])
        cap_g = self._constraint_fn()

        def save_bits(epoch):
            _save_state(bits_path, {
                "schema": STATE_SCHEMA, "settings": settings, "epoch": epoch,
                "model": _cpu_state(self.model), "bits": _cpu_state(bw),
                "optimizer": opt.state_dict(), "mu": al.mu, "fairness": fair.state_dict(),
                "history": history})

        if saved is None:  # claim the folder for this plan before the first epoch
            save_bits(0)

        # ---------------- phase 1: bits and weights together
        for epoch in range(start, epochs):
            history.append(self._epoch(epoch, epochs, settings, opt, fair, callback, bw=bw,
                                       al=al, cap_g=cap_g))
            save_bits(epoch + 1)

        # ---------------- rounding under the exact budget
        continuous = bw.unit_bits().detach().cpu().numpy()
        base = {"plan": settings["plan"], "bits_epochs": epochs,
                "continuous": hashlib.sha256(continuous.tobytes()).hexdigest()[:16]}
        ft_saved = None if force else _load_finetune(ft_path, settings, base)
        if ft_saved is not None:
            from fqopt.plan import AllocationPlan

            plan = AllocationPlan.from_dict(ft_saved["plan"], source=str(ft_path))
            rounding = dict(ft_saved["rounding"])
        else:
            plan, rounding = self._round(continuous, settings)

        # ---------------- phase 2: fixed-bit fine-tune
        layer_bits = _plan_layer_bits(plan, self.device)
        ft_opt = self._optimizer(settings, None)
        ft_start, ft_history = 0, []
        if ft_saved is not None:
            self.model.load_state_dict(ft_saved["model"])
            ft_opt.load_state_dict(ft_saved["optimizer"])
            fair.load_state_dict(ft_saved["fairness"])
            ft_start = int(ft_saved["epoch"])
            ft_history = list(ft_saved["history"])
            if ft_start > finetune_epochs:
                raise UserError(f"refine checkpoint {ft_path} has {ft_start} fine-tune epochs, "
                                f"more than the {finetune_epochs} asked for; pass --force to "
                                "start over")
        for epoch in range(ft_start, finetune_epochs):
            ft_history.append(self._epoch(epoch, finetune_epochs, settings, ft_opt, fair,
                                          callback, layer_bits=layer_bits))
            _save_state(ft_path, {
                "schema": STATE_SCHEMA, "settings": settings, "base": base, "epoch": epoch + 1,
                "plan": plan.to_dict(), "rounding": rounding, "model": _cpu_state(self.model),
                "optimizer": ft_opt.state_dict(), "fairness": fair.state_dict(),
                "history": ft_history})
        history = history + ft_history

        # ---------------- outputs
        from fqopt._io import atomic_path

        checkpoint = out_dir / "model.pt"
        with atomic_path(checkpoint) as tmp:
            torch.save(_cpu_state(self.model), tmp)
        plan_path = out_dir / "plan.json"
        plan.save(plan_path)
        result = RefineResult(plan=plan, static_plan=self.static_plan, out_dir=out_dir,
                              checkpoint=checkpoint, plan_path=plan_path,
                              budget=self.budget_spec, continuous_bits=continuous,
                              rounding=rounding, history=history, settings=settings)
        if evaluate:
            self._evaluate(result, callback)
            for name in ("report_search", "report_test", "static_report_search",
                         "static_report_test"):
                getattr(result, name).save(out_dir / f"{name}.json")
        write_json(out_dir / "history.json", history)
        summary = result.summary()
        summary["run"] = str(Path(self.run.path).resolve())
        write_json(out_dir / "refine.json", summary)
        return result

    def _optimizer(self, settings, bw):
        decay, no_decay = [], []
        for p in self.model.parameters():
            (decay if p.ndim > 1 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": settings["weight_decay"]},
                  {"params": no_decay, "weight_decay": 0.0}]
        if bw is not None and len(bw.params):
            # the bits get their own rate and no decay (decay would pull them towards 0 bits)
            groups.append({"params": list(bw.params), "lr": settings["bit_lr"],
                           "weight_decay": 0.0})
        return torch.optim.AdamW(groups, lr=settings["lr"])

    def _constraint_fn(self):
        """``g(bw)``: budget violation in average-bit units (≤ 0 is within the budget)."""
        total = float(self.budget_weights.sum())
        cap = float(self.problem.cap)

        def g(bw: BitWidths) -> torch.Tensor:
            return bw.average_bits() - cap / total

        return g

    def _batches(self, epoch, settings, phase):
        """``(x, y, g)`` batches of one epoch of the train split, on the device, augmented;
        deterministic in (seed, phase, epoch)."""
        from fqopt.training import augment_batch, epoch_order

        ds, bs, seed = self.dataset, settings["batch_size"], settings["seed"]
        train_idx = ds.split("train")
        steps = max(1, len(train_idx) // bs)
        if settings["steps_per_epoch"] is not None:
            steps = min(steps, settings["steps_per_epoch"])
        offset = 0 if phase == "bits" else 10_000   # the phases draw different orders
        order = epoch_order(ds.groups, train_idx, offset + epoch, seed, settings["balanced"])
        gen = torch.Generator().manual_seed(seed * 1000 + offset + epoch)
        for step in range(steps):
            x, y, g = ds.get_batch(order[step * bs:(step + 1) * bs])
            x, y = x.to(self.device, non_blocking=True), y.to(self.device)
            if settings["augment"]:
                x = augment_batch(x, gen)
            yield steps, x, y, g

    def _step(self, x, y, g, settings, opt, fair, *, bw=None, al=None, cap_g=None,
              layer_bits=None) -> tuple[float, float, float, float]:
        """One optimizer step: bits and weights (``bw`` given) or weights at fixed
        ``layer_bits``. Returns (loss, cross-entropy, fairness term, seconds)."""
        device = self.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        if bw is not None:
            weights = bw.quantized_weights(self.modules, self.quantizer)
        else:
            weights = fixed_bit_weights(self.modules, layer_bits, self.quantizer)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = torch.func.functional_call(self.model, weights, (x,))
        per = nn.functional.cross_entropy(logits.float(), y, reduction="none")
        alpha = settings.get("distill", 0.0)
        if alpha > 0:
            per = (1 - alpha) * per + alpha * self._distillation(
                x, logits.float(), settings["distill_temperature"])
        ce = per.mean()
        loss = ce
        r = None
        if settings["lambda_fair"] > 0:
            losses, present = group_losses(per, g, self.dataset.num_groups)
            r = fair(losses, present)
            loss = loss + settings["lambda_fair"] * r
        if bw is not None:
            loss = loss + al.penalty(cap_g(bw)).to(loss.dtype)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        opt.step()
        if bw is not None:
            bw.project_()
            with torch.no_grad():
                al.update(float(cap_g(bw)))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        return (float(loss.detach()), float(ce.detach()),
                0.0 if r is None else float(r.detach()), seconds)

    def _distillation(self, x, logits, temperature: float) -> torch.Tensor:
        """``[n]`` T²·KL(p_FP ‖ p_student) at temperature T; the teacher is the run's FP model
        in eval mode (loaded once, frozen)."""
        if getattr(self, "_teacher", None) is None:
            self._teacher = self.run.model().to(self.device).eval()
            for p in self._teacher.parameters():
                p.requires_grad_(False)
        with torch.no_grad():
            teacher = self._teacher(x).float()
        return distillation_loss(logits, teacher, temperature)

    def _epoch(self, epoch, epochs, settings, opt, fair, callback, *, bw=None, al=None,
               cap_g=None, layer_bits=None) -> dict:
        """One epoch; with ``bw`` the bits learn (phase 1), else fixed ``layer_bits``."""
        phase = "bits" if bw is not None else "finetune"
        stage = (f"refine {epoch + 1}/{epochs}" if bw is not None
                 else f"fine-tune {epoch + 1}/{epochs}")
        self.model.train()
        sums = np.zeros(3)
        times = []
        steps = 0
        for steps, x, y, g in self._batches(epoch, settings, phase):
            *values, seconds = self._step(x, y, g, settings, opt, fair, bw=bw, al=al,
                                          cap_g=cap_g, layer_bits=layer_bits)
            sums += values
            times.append(seconds)
            if callback is not None:
                info = {"loss": sums[0] / len(times)}
                if bw is not None:
                    info["bits"] = float(bw.average_bits().detach())
                callback(stage, len(times), steps, **info)
        loss, ce, fair_value = (sums / max(1, len(times))).tolist()
        row = {"phase": phase, "epoch": epoch + 1, "steps": len(times), "loss": loss, "ce": ce,
               "fair": fair_value,
               # the first step pays one-off costs (allocations, autograd warm-up)
               "step_seconds": float(np.mean(times[1:] if len(times) > 1 else times))}
        if bw is not None:
            with torch.no_grad():
                row.update(avg_bits=float(bw.average_bits()), violation=float(cap_g(bw)),
                           mu=al.mu)
        return row

    def measure_steps(self, settings, steps: int) -> dict:
        """Median seconds of a refinement step and of a fixed-bit fine-tune step, alternated on
        the same batches (so load changes hit both alike)."""
        fair = make_fairness(settings["fairness"], self.dataset.num_groups)
        bw = self._bit_widths()
        opt_bits, opt_fixed = self._optimizer(settings, bw), self._optimizer(settings, None)
        al = AugmentedLagrangian(rho=settings["lambda_budget"])
        cap_g = self._constraint_fn()
        layer_bits = _plan_layer_bits(self.static_plan, self.device)
        self.model.train()
        t_bits, t_fixed = [], []
        done, epoch = 0, 0
        while done < steps + 1:
            for _, x, y, g in self._batches(epoch, settings, "bits"):
                t_bits.append(self._step(x, y, g, settings, opt_bits, fair, bw=bw, al=al,
                                         cap_g=cap_g)[-1])
                t_fixed.append(self._step(x, y, g, settings, opt_fixed, fair,
                                          layer_bits=layer_bits)[-1])
                done += 1
                if done >= steps + 1:
                    break
            epoch += 1
        refine_s, fixed_s = float(np.median(t_bits[1:])), float(np.median(t_fixed[1:]))
        return {"steps": steps, "refine_step_s": refine_s, "fixed_step_s": fixed_s,
                "ratio": refine_s / fixed_s}

    def _bit_widths(self) -> BitWidths:
        return BitWidths(self.units, self.init_bits, fixed=self.pinned,
                         budget_weights=self.budget_weights, min_bits=int(self.bits.min()),
                         max_bits=int(self.bits.max())).to(self.device)

    def _round(self, continuous, settings):
        from fqopt.plan import AllocationPlan
        from fqopt.solvers import solve

        costs = rounding_costs(continuous, self.bits, self.budget_weights)
        problem = self._problem(costs, self.budget)
        result = solve(problem, settings["solver"])
        if not result.ok:
            raise UserError(f"BAQ rounding failed: the {result.backend} solve ended "
                            f"{result.status} ({result.message})")
        meta = {"refined_from": settings["plan"], "baq": {
            k: settings[k] for k in ("fairness", "lambda_fair", "lambda_budget", "quantizer",
                                     "seed")}, "pinned": sorted(self.pinned)}
        plan = AllocationPlan.from_unit_bits(
            self.units, result.assignment, model=self.run.model_name,
            bits=self.bits.tolist(), budget=dict(result.budget),
            objective=f"baq:{settings['fairness']}", solver=result.summary(), meta=meta,
            quantizer=settings["quantizer"])
        rounding = {**result.summary(), "budget_used": float(result.budget_used)}
        return plan, rounding

    def _evaluate(self, result, callback):
        from fqopt.evaluation import evaluate

        cb = None
        if callback is not None:
            def cb(stage, done, total, **info):
                callback("evaluate", done, total, **info)
        ds, q = self.dataset, self.quantizer
        result.report_search = evaluate(self.model, ds, "search", plan=result.plan,
                                        quantizer=q, callback=cb)
        result.report_test = evaluate(self.model, ds, "test", plan=result.plan, quantizer=q,
                                      callback=cb)
        static = self.run.model().to(self.device)
        result.static_report_search = evaluate(static, ds, "search", plan=self.static_plan,
                                               quantizer=q, callback=cb)
        result.static_report_test = evaluate(static, ds, "test", plan=self.static_plan,
                                             quantizer=q, callback=cb)


def _plan_layer_bits(plan, device) -> dict:
    from fqopt.apply import plan_layer_bits

    return plan_layer_bits(plan, device)


def _cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _save_state(path: Path, state: dict) -> None:
    from fqopt._io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _read_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or corrupt files all end here
        raise UserError(f"refine checkpoint {path} cannot be read ({type(exc).__name__}); "
                        "pass --force to start over") from None
    if not isinstance(state, dict) or state.get("schema") != STATE_SCHEMA:
        raise UserError(f"refine checkpoint {path} is not a BAQ checkpoint "
                        f"(schema {STATE_SCHEMA!r}); pass --force to start over")
    return state


def _check_same(path: Path, state: dict, settings: dict) -> None:
    old = state.get("settings") or {}
    if old.get("plan") != settings["plan"]:
        raise UserError(f"refine checkpoint {path} was written for another plan "
                        f"({old.get('plan')}, this plan is {settings['plan']}); pass --force "
                        "to start over or choose another output folder")
    diff = [k for k in settings if old.get(k) != settings[k]]
    if diff:
        k = diff[0]
        raise UserError(f"refine checkpoint {path} was written with other settings ({k} = "
                        f"{old.get(k)!r}, now {settings[k]!r}); pass --force to start over")


def _load_state(path: Path, settings: dict, resume: bool) -> dict | None:
    if not path.is_file():
        return None
    state = _read_state(path)
    _check_same(path, state, settings)
    if not resume:
        raise UserError(f"refine checkpoint {path} exists and resuming is off; pass --force "
                        "to start over")
    return state


def _load_finetune(path: Path, settings: dict, base: dict) -> dict | None:
    """The fine-tune checkpoint if it continues this exact rounding, else None (stale)."""
    if not path.is_file():
        return None
    state = _read_state(path)
    _check_same(path, state, settings)
    return state if state.get("base") == base else None


def load_refined(out_dir, run=None, *, device=None):
    """``(model, plan)`` of a refinement folder: the refined FP weights (eval mode) and the
    refined plan; ``fqopt.quantized(model, plan)`` gives the quantized model. ``run`` defaults to
    the run recorded in ``refine.json``."""
    from fqopt._io import read_json
    from fqopt import models
    from fqopt.plan import AllocationPlan
    from fqopt.runs import Run

    out_dir = Path(out_dir)
    if run is None:
        summary = read_json(out_dir / "refine.json", what="refine summary")
        if "run" not in summary:
            raise UserError(f"refine summary {out_dir / 'refine.json'} names no run; pass run=")
        run = summary["run"]
    run = run if isinstance(run, Run) else Run.open(run)
    plan = AllocationPlan.load(out_dir / "plan.json")
    model = run.new_model()
    models.load_weights(model, out_dir / "model.pt", name=run.model_name)
    from fqopt.units import discover_units

    plan.validate(discover_units(model, plan.granularity, pin="none"), model=run.model_name)
    if device is not None:
        model = model.to(device)
    return model.eval(), plan
