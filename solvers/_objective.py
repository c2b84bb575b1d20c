"""The objectives a plan minimises over the groups' predicted costs (docs/design.md §4.3).

Every objective is convex and piecewise linear in the group costs ``C`` and has the form

    f(C) = lo · C + d · (sum of the q largest C_g)  =  max_{w ∈ W} w · C,
    W = {w : lo ≤ w ≤ lo + d, Σ_g w_g = 1}         (a capped simplex)

which is what the Lagrangian back-end dualises and what the MILP and CP-SAT back-ends linearise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fqopt.errors import UserError

__all__ = ["Objective"]
_OBJECTIVE_HELP = ("worst, balanced, mean, blend:λ (0 ≤ λ ≤ 1, (1−λ)·balanced + λ·worst) or "
                   "cvar:α (0 < α ≤ 1, mean of the ⌈α·G⌉ worst groups)")


# --------------------------------------------------------------------------- objectives
@dataclass(frozen=True, eq=False)
class Objective:
    """``f(C) = lo·C + d·topsum_q(C)``, the group combination a plan minimises.

    ``spec`` is the name it was parsed from; ``lo`` is ``[G]``; ``topsum_q`` is the sum of the q
    largest group costs. The dual set is ``W = {lo ≤ w ≤ lo + d, Σw = 1}``.

    - ``worst``: max_g C_g (lo = 0, d = 1, q = 1)
    - ``balanced``: mean_g C_g (lo = 1/G, d = 0)
    - ``mean``: Σ_g p_g C_g with p_g = group_counts_g / Σ group_counts (group-blind, HAWQ-style)
    - ``blend:λ``: (1 − λ)·balanced + λ·worst (lo = (1 − λ)/G, d = λ, q = 1)
    - ``cvar:α``: the mean of the k = ⌈α·G⌉ largest group costs (lo = 0, d = 1/k, q = k);
      ``cvar:1`` is ``balanced`` and any α ≤ 1/G is ``worst``.
    """

    spec: str
    lo: np.ndarray
    d: float
    q: int

    @classmethod
    def parse(cls, spec: str, num_groups: int, group_counts=None) -> "Objective":
        G = int(num_groups)
        text = str(spec).strip()
        name, _, arg = text.partition(":")
        name = name.strip().lower()
        uniform = np.full(G, 1.0 / G)
        if name in ("worst", "balanced", "mean") and arg:
            raise UserError(f"objective {text!r} takes no parameter; expected {_OBJECTIVE_HELP}")
        if name == "worst":
            return cls("worst", np.zeros(G), 1.0, 1)
        if name == "balanced":
            return cls("balanced", uniform, 0.0, 0)
        if name == "mean":
            counts = None if group_counts is None else np.asarray(group_counts, dtype=np.float64)
            if counts is None or counts.shape != (G,) or counts.sum() <= 0:
                raise UserError("objective 'mean' weights groups by their calibration counts, but "
                                "the group_counts are missing or all zero")
            return cls("mean", counts / counts.sum(), 0.0, 0)
        if name in ("blend", "cvar"):
            try:
                value = float(arg)
            except ValueError:
                raise UserError(f"objective {text!r}: {name} needs a number, e.g. "
                                f"'{name}:0.5'; expected {_OBJECTIVE_HELP}") from None
            if name == "blend":
                if not 0.0 <= value <= 1.0:
                    raise UserError(f"objective {text!r}: λ must lie in [0, 1]")
                spec_out = f"blend:{value:g}"
                if value == 0.0:
                    return cls(spec_out, uniform, 0.0, 0)
                return cls(spec_out, uniform * (1.0 - value), value, 1)
            if not 0.0 < value <= 1.0:
                raise UserError(f"objective {text!r}: α must lie in (0, 1]")
            k = min(G, max(1, math.ceil(value * G - 1e-9)))
            spec_out = f"cvar:{value:g}"
            if k == G:
                return cls(spec_out, uniform, 0.0, 0)
            return cls(spec_out, np.zeros(G), 1.0 / k, k)
        raise UserError(f"unknown objective {text!r}; expected {_OBJECTIVE_HELP}")

    @property
    def num_groups(self) -> int:
        return self.lo.shape[0]

    @property
    def hi(self) -> np.ndarray:
        return self.lo + self.d

    @property
    def is_linear(self) -> bool:
        return self.q == 0 or self.d == 0.0

    def __call__(self, C: np.ndarray) -> np.ndarray | float:
        """Objective of group costs ``C`` ``[..., G]`` -> ``[...]``."""
        C = np.asarray(C, dtype=np.float64)
        out = C @ self.lo
        if self.is_linear:
            return out
        if self.q == 1:
            return out + self.d * C.max(axis=-1)
        G = C.shape[-1]
        top = np.partition(C, G - self.q, axis=-1)[..., G - self.q:]
        return out + self.d * top.sum(axis=-1)

    def weights(self, C: np.ndarray) -> np.ndarray:
        """A maximising ``w ∈ W`` for ``C`` ``[G]`` (a supergradient of f at C)."""
        w = self.lo.copy()
        if not self.is_linear:
            w[np.argsort(-np.asarray(C), kind="stable")[:self.q]] += self.d
        return w

    def project(self, w: np.ndarray) -> np.ndarray:
        """Euclidean projection onto W; used to make an LP solution exactly dual-feasible."""
        lo, hi = self.lo, self.hi
        if self.is_linear:
            return lo.copy()
        w = np.asarray(w, dtype=np.float64)
        # s(τ) = Σ clip(w − τ, lo, hi) is piecewise linear and non-increasing in τ, with kinks
        # at w − hi and w − lo; s(first kink) = Σhi ≥ 1 ≥ Σlo = s(last kink). Find s(τ) = 1.
        kinks = np.sort(np.r_[w - hi, w - lo])
        s = np.clip(w[None, :] - kinks[:, None], lo, hi).sum(axis=1)
        j = int(np.count_nonzero(s >= 1.0)) - 1
        if j < 0:
            tau = kinks[0]
        elif j >= kinks.size - 1 or s[j] == s[j + 1]:
            tau = kinks[j]
        else:
            tau = kinks[j] + (s[j] - 1.0) / (s[j] - s[j + 1]) * (kinks[j + 1] - kinks[j])
        p = np.clip(w - tau, lo, hi)
        # remove the last float residue on a coordinate with room, keeping lo ≤ p ≤ hi
        r = 1.0 - p.sum()
        room = (hi - p) if r > 0 else (p - lo)
        j = int(np.argmax(room))
        p[j] = min(max(p[j] + r, lo[j]), hi[j])
        return p
