"""``quantile``: FairQuant's allocation rule, as a baseline (docs/reference.md, "the quantile rule").

Units are ranked globally by an importance score; the least important share p_1 of the units
gets the lowest bit-width b_1, the next share p_2 gets b_2, and so on (default bits (2, 4, 8) at
shares (0.2, 0.4, 0.4)). Shares count units (a tied group counts as its number of units); a unit
whose pins or min/max bits exclude its bit-width takes the nearest allowed one (the lower on a
tie). Fixed (pinned) units are not ranked.

Scores: the problem's ``scores`` (a table's ``meta['scores']``, e.g. FairQuant's mean
|importance| per weight of the unit) when given; otherwise the unit's cost spread per weight,
``f(costs[u, :, lowest] − costs[u, :, highest]) / size_u``, with ``f`` the objective's group
combination (max for ``worst``, the mean for ``balanced``, ...), mirroring a per-weight mean.

Matched bits (``match_budget=True``, the default): FairQuant's shares fix a share of units per
bit-width, not a size. To compare at the same budget, the shares are tilted exponentially,
``p_j(θ) ∝ p_j · exp(θ · b_j / b_max)``: θ = 0 is FairQuant's split, θ → −∞ puts every unit on
the lowest bits, θ → +∞ on the highest, and every unit's bit-width is non-decreasing in θ. The
largest θ whose plan fits the budget is found by bisection, so the plan meets the budget (to one
unit's step) with the ranking unchanged. With ``match_budget=False`` the shares are used as
given, and a plan over the budget is reported ``infeasible``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fqopt.errors import UserError
from fqopt.solvers._registry import Solver, register_solver
from fqopt.solvers._result import Solution


@register_solver("quantile")
@dataclass
class QuantileSolver(Solver):
    """FairQuant's rank-and-share allocation (see the module docstring). No bound."""

    bits: tuple[int, ...] = (2, 4, 8)
    shares: tuple[float, ...] = (0.2, 0.4, 0.4)
    match_budget: bool = True

    def __post_init__(self):
        self.bits = tuple(int(b) for b in self.bits)
        self.shares = tuple(float(s) for s in self.shares)
        if len(self.bits) != len(self.shares) or not self.bits:
            raise UserError(f"quantile: {len(self.bits)} bit-widths but {len(self.shares)} "
                            "shares")
        if any(b2 <= b1 for b1, b2 in zip(self.bits, self.bits[1:])):
            raise UserError(f"quantile: bits must be increasing, got {list(self.bits)}")
        if any(s < 0 for s in self.shares) or abs(sum(self.shares) - 1.0) > 1e-6:
            raise UserError(f"quantile: shares must be non-negative and sum to 1, got "
                            f"{list(self.shares)}")

    def _solve(self, red, deadline) -> Solution:
        missing = [b for b in self.bits if b not in red.bits]
        if missing:
            raise UserError(f"quantile: bit-widths {missing} are not candidates of the problem "
                            f"{red.bits.tolist()}")
        score = red.scores if red.scores is not None else _spread_scores(red)
        order = np.argsort(score, kind="stable")          # least important first
        counts = red.counts.astype(np.float64)[order]
        # each unit's position in the ranking: the midpoint of its share of all units
        position = np.empty(red.num_units)
        position[order] = (np.cumsum(counts) - 0.5 * counts) / counts.sum()
        ks = np.searchsorted(red.bits, self.bits)          # share j -> column in bits
        nearest = _nearest_allowed(red.allowed, red.bits)  # [V, K] column -> allowed column
        with np.errstate(divide="ignore"):
            log_base = np.log(np.asarray(self.shares))     # a zero share stays zero
        rel_bits = np.asarray(self.bits) / max(self.bits)

        def plan(theta: float):
            logits = log_base + theta * rel_bits
            p = np.exp(logits - logits.max())              # stable for any θ
            cum = np.cumsum(p / p.sum())
            j = np.minimum(np.searchsorted(cum, position, side="right"), len(cum) - 1)
            x = nearest[np.arange(red.num_units), ks[j]]
            return x, p / p.sum()

        x, p = plan(0.0)
        theta = 0.0
        if self.match_budget:
            lo, hi = -1.0, 1.0
            while not red.is_feasible(plan(lo)[0]) and lo > -1e4:
                lo *= 2
            while red.is_feasible(plan(hi)[0]) and hi < 1e4:
                hi *= 2
            if not red.is_feasible(plan(lo)[0]):
                least = min(b for b, sh in zip(self.bits, self.shares) if sh > 0)
                return Solution("infeasible", None, None, {
                    "message": f"quantile: even with every unit at {least} bits (the lowest "
                               "bit-width with a share) the plan exceeds the budget"})
            if red.is_feasible(plan(hi)[0]):
                lo = hi
            for _ in range(80):
                mid = 0.5 * (lo + hi)
                if red.is_feasible(plan(mid)[0]):
                    lo = mid
                else:
                    hi = mid
            theta = lo
            x, p = plan(lo)
        elif not red.is_feasible(x):
            return Solution("infeasible", None, None, {
                "message": "quantile: FairQuant's shares "
                           f"{dict(zip(self.bits, self.shares))} exceed the budget; pass "
                           "match_budget=True to scale them"})
        info = {"theta": theta, "shares": {int(b): float(s) for b, s in zip(self.bits, p)},
                "scores": "problem" if red.scores is not None else "cost spread"}
        return Solution("feasible", x, None, info)


def _spread_scores(red) -> np.ndarray:
    V = red.num_units
    lo, hi = red.min_choice(), red.max_choice()
    v = np.arange(V)
    spread = red.costs[v, :, lo] - red.costs[v, :, hi]   # [V, G]
    return np.asarray(red.objective(spread)) / red.sizes


def _nearest_allowed(allowed: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """``[V, K]``: for each column, the allowed column of nearest bits (the lower on a tie)."""
    dist = np.abs(bits[:, None] - bits[None, :]).astype(float)    # [target, candidate]
    d = np.where(allowed[:, None, :], dist[None, :, :], np.inf)    # [V, target, candidate]
    return np.argmin(d, axis=2)  # argmin takes the first (lower) candidate on ties
