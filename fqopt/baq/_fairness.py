"""BAQ's fairness terms ``R_fair``: functions of the per-group mean losses of a batch.

A registry (:data:`FAIRNESS_TERMS`): ``range`` = max − min (FairQuant's), ``worst`` = max,
``cvar:α`` = mean of the ⌈α·P⌉ largest of the P present groups, ``dro:η`` = Group DRO with
exponentiated-gradient group weights. A new term is one class and ``@register_fairness``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from fqopt._registry import Registry
from fqopt.errors import UserError


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


FAIRNESS_TERMS: Registry[type[FairnessTerm]] = Registry(
    "fairness term", hint="(cvar and dro take ':value')", name_attr="name")


def register_fairness(name: str):
    """Class decorator: make a :class:`FairnessTerm` available as ``fairness=name[:arg]``."""
    return FAIRNESS_TERMS.register(name)


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
    term = FAIRNESS_TERMS.get(name)
    if arg and name in ("range", "worst"):
        raise UserError(f"fairness term {name!r} takes no parameter, got {spec!r}")
    value = None
    if arg:
        try:
            value = float(arg)
        except ValueError:
            raise UserError(f"fairness {spec!r}: {arg!r} is not a number") from None
    return term(num_groups, value)

