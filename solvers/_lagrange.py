"""``lagrange``: fqopt's own allocation solver — dual decomposition with a certified bound.

With the objective written as ``f(C) = max_{w ∈ W} w·C`` (a capped simplex, see
:class:`~fqopt.solvers._problem.Objective`) and a multiplier ``μ ≥ 0`` on the budget, the
Lagrangian dual

    D(w, μ) = Σ_v min_k [ Σ_g w_g costs[v, g, k] + μ · usage[v, k] ] + w·base − μ · cap

separates per unit and costs one vectorised ``[V, K, G] @ [G]`` product and an argmin. For every
``w ∈ W`` and ``μ ≥ 0``, ``D(w, μ) ≤ f(C(x)) + μ·(usage(x) − cap) ≤ f(C(x))`` for every feasible
x (weak duality), so any evaluated ``D`` is a certified lower bound; its maximum equals the LP
relaxation, whose optimum has at most G + 1 fractional units, so the gap vanishes as U ≫ G.

Dual: Kelley's cutting-plane method over ``(w, μ)`` — each oracle call yields the cut
``D(w', μ') ≤ w'·C(x) + μ'·(usage(x) − cap)``, and the master LP (G + 2 variables, one
persistent HiGHS model re-solved from its last basis) proposes the next point. The cuts depend
on neither the budget nor the objective, so a ladder's budgets and a search's trials on one
table share them.

Primal: the minimiser at the best ``(w, μ)`` with μ raised (bisection) until the budget holds,
then a local search over single moves and pairs of moves drawn from the moves of smallest
Lagrangian reduced cost, accepting a move only if it keeps the integer budget exactly and lowers
the true objective.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from fqopt.solvers._highs import new_highs
from fqopt.solvers._problem import ReducedProblem
from fqopt.solvers._registry import Solver, register_solver
from fqopt.solvers._result import Solution

_INF = np.inf


class _Scaled:
    """The reduced problem in normalised units: costs / σ, usage / ν (so both are O(1))."""

    def __init__(self, red: ReducedProblem):
        self.red = red
        V, G, K = red.costs.shape
        self.V, self.G, self.K = V, G, K
        mag = np.abs(red.costs).max(axis=2).sum(axis=0) + np.abs(red.base_costs)
        self.sigma = float(max(mag.max(), 1e-300))
        self.nu = float(max(red.usage.max(axis=1).sum(), 1))
        self.cT = np.ascontiguousarray(red.costs.transpose(0, 2, 1)) / self.sigma  # [V, K, G]
        self.base = red.base_costs / self.sigma
        self.rr = red.usage / self.nu                                             # [V, K]
        self.pen = np.where(red.allowed, 0.0, _INF)                               # [V, K]
        self.ar = np.arange(V)
        self.obj = red.objective
        # beyond mu_max every unit takes its least-usage choice for any w in W
        c = np.where(red.allowed[:, :, None], self.cT, np.nan)
        spread = np.nanmax(c, axis=(1, 2)) - np.nanmin(c, axis=(1, 2))
        b = np.sort(np.where(red.allowed, red.bits[None, :].astype(float), np.nan), axis=1)
        weight = red.usage[:, 0] / red.bits[0]  # usage[v, k] = weight_v · bits[k]
        step = np.nanmin(np.diff(b, axis=1), axis=1) * weight / self.nu
        pos = step > 0
        self.mu_max = float((spread[pos] / step[pos]).max() * (1 + 1e-6) + 1e-12) \
            if pos.any() else 0.0

    def rebind(self, red: ReducedProblem) -> "_Scaled":
        """The same arrays for another member of ``red``'s family (objective, budget)."""
        other = copy.copy(self)
        other.red, other.obj = red, red.objective
        return other

    @property
    def cap(self) -> float:
        return self.red.free_cap / self.nu

    def scores(self, w: np.ndarray) -> np.ndarray:
        return self.cT @ w + self.pen

    def oracle(self, w: np.ndarray, mu: float):
        """D(w, μ) (normalised), group costs [G] and usage of the minimiser, the minimiser."""
        s = self.scores(w) + mu * self.rr
        x = s.argmin(axis=1)
        val = float(s[self.ar, x].sum() + w @ self.base - mu * self.cap)
        return val, self.group_costs(x), float(self.rr[self.ar, x].sum()), x

    def group_costs(self, x: np.ndarray) -> np.ndarray:
        return self.cT[self.ar, x].sum(axis=0) + self.base

    def used(self, x: np.ndarray) -> int:
        return int(self.red.usage[self.ar, x].sum())

    def center(self) -> np.ndarray:
        return self.obj.project(self.obj.lo + self.obj.d * self.obj.q / self.G)

    def certified_bound(self, w: np.ndarray, mu: float) -> float:
        """D at an exactly dual-feasible point, in original cost units."""
        red = self.red
        w = self.obj.project(np.asarray(w, dtype=np.float64))
        mu_o = max(float(mu), 0.0) * self.sigma / self.nu
        s = np.einsum("vgk,g->vk", red.costs, w) + mu_o * red.usage + self.pen
        return float(s.min(axis=1).sum() + w @ red.base_costs - mu_o * red.free_cap)


class _Master:
    """The cutting-plane model of the dual as one persistent HiGHS LP over ``(w, μ, t)``:

        maximise t − cap·μ   s.t.  t ≤ w·C_i + μ·u_i  (every cut i),  Σw = 1,
                                   w ∈ [lo, hi],  0 ≤ μ ≤ μ_max

    (normalised units). A cut ``(C(x), u(x))`` comes from any minimiser x and holds for every
    objective and budget, so one model serves a problem's whole family: a new budget changes
    μ's cost, a new objective w's bounds, and HiGHS re-solves from the previous basis.
    """

    def __init__(self, num_groups: int, max_cuts: int = 400):
        import highspy  # deferred: a solver library loads only when its back-end runs

        G = self.G = num_groups
        self.inf = highspy.kHighsInf
        self.h = new_highs(primal_feasibility_tolerance=1e-10,
                           dual_feasibility_tolerance=1e-10)
        self.idx = np.arange(G + 2, dtype=np.int32)
        self.h.addVars(G + 2, np.r_[np.zeros(G + 1), -self.inf], np.r_[np.ones(G + 1), self.inf])
        self.h.addRow(1.0, 1.0, G, self.idx[:G], np.ones(G))
        self.h.changeColCost(G + 1, -1.0)
        self.cuts = 0
        self.max_cuts = max_cuts

    def add(self, C: np.ndarray, u: float) -> None:
        if self.cuts >= self.max_cuts:  # drop the oldest half (row 0 is Σw = 1)
            drop = self.cuts // 2
            self.h.deleteRows(drop, np.arange(1, drop + 1, dtype=np.int32))
            self.cuts -= drop
        self.h.addRow(-self.inf, 0.0, self.G + 2, self.idx, np.r_[-C, -u, 1.0])
        self.cuts += 1

    def solve(self, lo, hi, mu_max: float, cap: float):
        """``(w, μ, model value)`` maximising the model over W × [0, μ_max], or None."""
        import highspy  # deferred: a solver library loads only when its back-end runs

        G, h = self.G, self.h
        h.changeColsBounds(G + 1, self.idx[:G + 1], np.r_[lo, 0.0], np.r_[hi, mu_max])
        h.changeColCost(G, cap)
        h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:  # pragma: no cover
            return None
        x = np.asarray(h.getSolution().col_value)
        return x[:G], float(x[G]), float(x[G + 1] - cap * x[G])


def _budget_mu(sc: _Scaled, s0: np.ndarray, mu_hint: float, steps: int = 24
               ) -> tuple[np.ndarray, float]:
    """The smallest μ ≥ 0 (to bisection precision) at which the minimiser of ``s0 + μ·usage``
    fits the budget, and that minimiser."""
    usage, cap = sc.red.usage, sc.red.free_cap

    def at(mu):
        x = (s0 + mu * sc.rr).argmin(axis=1)
        return x, int(usage[sc.ar, x].sum())

    x, u = at(0.0)
    if u <= cap:
        return x, 0.0
    lo, hi = 0.0, max(mu_hint, 1e-12)
    x, u = at(hi)
    while u > cap and hi < 4 * sc.mu_max + 1e-9:
        lo, hi = hi, hi * 2
        x, u = at(hi)
    if u > cap:  # float corner: fall back on the least-usage choice, always feasible
        return sc.red.min_choice(), hi
    best = x
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        x, u = at(mid)
        if u <= cap:
            hi, best = mid, x
        else:
            lo = mid
    return best, hi


#: weights of the centre of W mixed into the dual point when a primal is recovered
_MIX = (0.0, 1e-6, 1e-3, 0.05)


def recover_primal(sc: _Scaled, w_star: np.ndarray, mu: float):
    """The best budget-feasible Lagrangian minimiser near ``(w_star, μ)``.

    At a degenerate dual optimum (a vertex ``w`` of W, μ = 0 when the budget does not bind)
    whole blocks of units tie: a unit whose costs fall only in groups that ``w`` ignores costs
    nothing under ``w`` at any bit-width, and a plain argmin gives it its lowest bits, which can
    make another group the worst by orders of magnitude. Each candidate mixes a little of the
    centre of W into ``w_star`` (every group then counts) and breaks the remaining exact ties by
    the centre's costs; the true objective picks the candidate. Returns ``(x, ρ [V, K], f(x))``
    with ρ the reduced costs the local search ranks its moves by.
    """
    centre = sc.center()
    tie = sc.scores(centre)
    tie = tie - np.where(np.isfinite(tie), tie, 0).min(axis=1, keepdims=True)
    tie_max = max(float(np.abs(np.where(np.isfinite(tie), tie, 0)).max()), 1e-300)
    best = None
    for eps in _MIX:
        w = sc.obj.project((1.0 - eps) * w_star + eps * centre) if eps else w_star
        s0 = sc.scores(w)
        finite = np.isfinite(s0)
        # a tie-break far below every non-zero difference of s0, so it orders exact ties only
        span = float(np.abs(np.where(finite, s0, 0)).max()) + tie_max
        s = s0 + tie * (1e-12 * span / tie_max)
        x, mu_used = _budget_mu(sc, s, mu)
        f = float(sc.obj(sc.group_costs(x)))
        if best is None or f < best[2]:
            best = (x, s + mu_used * sc.rr, f)
    return best


def improve(sc: _Scaled, x: np.ndarray, rho: np.ndarray, *, pool: int = 4000,
            pair_pool: int = 300, max_rounds: int = 400, deadline: float | None = None):
    """Local search from a feasible choice ``x``: apply the best single move, else the best pair
    of moves, among the moves of smallest reduced cost ``rho`` ``[V, K]``, as long as the true
    objective falls and the integer budget holds. Returns (x, number of moves)."""
    V, K = sc.V, sc.K
    usage, cap, obj = sc.red.usage, sc.red.free_cap, sc.obj
    x = x.copy()
    moves = 0
    finite = np.isfinite(rho)
    n_moves = int(finite.sum()) - V
    if n_moves <= 0:
        return x, 0
    P = min(pool, n_moves)
    M = min(pair_pool, P)
    for _ in range(max_rounds):
        if deadline is not None and time.perf_counter() > deadline:
            break
        C = sc.group_costs(x)
        f0 = float(obj(C))
        eps = 1e-13 * max(1.0, abs(f0))
        slack = cap - sc.used(x)
        delta = rho - rho[sc.ar, x][:, None]
        delta[sc.ar, x] = _INF
        flat = delta.ravel()
        idx = np.argpartition(flat, P - 1)[:P] if P < flat.size else np.arange(flat.size)
        idx = idx[np.isfinite(flat[idx])]
        vv, kk = np.divmod(idx, K)
        dC = sc.cT[vv, kk] - sc.cT[vv, x[vv]]
        dU = usage[vv, kk] - usage[vv, x[vv]]
        fs = obj(C + dC)
        ok = (dU <= slack) & (fs < f0 - eps)
        if ok.any():
            j = np.flatnonzero(ok)[np.argmin(fs[ok])]
            x[vv[j]] = kk[j]
            moves += 1
            continue
        if M == 0:
            break
        r = flat[idx]
        o = np.argpartition(r, M - 1)[:M] if M < r.size else np.arange(r.size)
        o = o[np.argsort(r[o], kind="stable")]
        pf = obj(C + dC[o][:, None, :] + dC[o][None, :, :])
        ok = ((dU[o][:, None] + dU[o][None, :] <= slack) & (pf < f0 - eps)
              & (vv[o][:, None] != vv[o][None, :]))
        if not ok.any():
            break
        flat_ok = np.flatnonzero(ok)
        j = flat_ok[np.argmin(pf.ravel()[flat_ok])]
        a, b = np.unravel_index(j, pf.shape)
        x[vv[o[a]]] = kk[o[a]]
        x[vv[o[b]]] = kk[o[b]]
        moves += 2
    return x, moves


def repair_budget(red: ReducedProblem, choice: np.ndarray) -> np.ndarray:
    """Greedy exact budget repair: while over budget, move the unit whose step down to a lower
    allowed bit-width raises the objective least per unit of usage saved."""
    x = np.asarray(choice, dtype=np.int64).copy()
    ar = np.arange(red.num_units)
    obj = red.objective
    while red.total_usage(x) > red.cap:
        C = red.group_costs(x)
        f0 = float(obj(C))
        saved = red.usage[ar, x][:, None] - red.usage                   # [V, K]
        cand = red.allowed & (saved > 0)
        v, k = np.nonzero(cand)
        df = obj(C + red.costs[v, :, k] - red.costs[v, :, x[v]]) - f0
        j = int(np.argmin(df / saved[v, k]))
        x[v[j]] = k[j]
    return x


@register_solver("lagrange")
@dataclass
class LagrangeSolver(Solver):
    """Dual decomposition with a certified lower bound (see the module docstring).

    tol: the dual stops when the cutting-plane model's bound is within ``tol`` (relative) of
        the best dual value.
    max_iter: oracle calls of the dual.
    pool, pair_pool: moves of smallest reduced cost searched singly and in pairs by the local
        search; max_rounds: its moves.
    warm_start: keep the master LP and its cuts between solves of one problem family (any
        budget, any objective: :meth:`AllocationProblem.with_objective`).
    """

    tol: float = 1e-7
    max_iter: int = 200
    pool: int = 4000
    pair_pool: int = 60
    max_rounds: int = 400
    warm_start: bool = True
    _cache: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)

    exact = False
    #: problem families (same costs, any objective or budget) whose master LP is kept
    cache_families: ClassVar[int] = 8

    def _family(self, red) -> list:
        """``[scaled problem, master LP]`` of ``red``'s family, kept between solves (fresh
        without warm starts)."""
        if not self.warm_start:
            sc = _Scaled(red)
            return [sc, _Master(sc.G)]
        key = red.family if red.family is not None else red.token
        state = self._cache.get(key)
        if state is None:
            sc = _Scaled(red)
            state = self._cache[key] = [sc, _Master(sc.G)]
            while len(self._cache) > self.cache_families:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return state

    def _solve(self, red, deadline) -> Solution:
        t0 = time.perf_counter()
        state = self._family(red)
        sc, master = state[0].rebind(red), state[1]
        obj = sc.obj
        best_val, best_w, best_mu = -_INF, sc.center(), 0.0
        iters = 0

        def evaluate(w, mu):
            nonlocal best_val, best_w, best_mu, iters
            iters += 1
            val, C, u, _ = sc.oracle(w, mu)
            master.add(C, u)  # no cap, no objective inside: the cut holds for the whole family
            if val > best_val:
                best_val, best_w, best_mu = val, w, mu

        # a cold family starts from the two sides of the budget crossing at the centre of W; a
        # warm one from its master LP, whose cuts (other budgets, other objectives) still hold
        if master.cuts == 0:
            w = sc.center()
            _, mu = _budget_mu(sc, sc.scores(w), 1.0, steps=25)  # a start: coarse will do
            evaluate(w, mu)
            evaluate(w, mu * 0.999)
        timed_out = False
        ub = _INF
        stall, last_ub = 0, _INF
        while iters < self.max_iter:
            if deadline is not None and time.perf_counter() > deadline:
                timed_out = True
                break
            m = master.solve(obj.lo, obj.hi, sc.mu_max, sc.cap)
            if m is None:
                break
            w, mu, ub = m
            if np.isfinite(best_val) and ub - best_val <= self.tol * max(abs(best_val), 1e-9):
                break
            stall = stall + 1 if ub > last_ub - 1e-12 * max(1.0, abs(ub)) else 0
            if stall >= 8:
                break
            last_ub = ub
            evaluate(w, mu)
        t_dual = time.perf_counter() - t0

        # primal: budget-feasible minimisers at the best multipliers (ties broken towards the
        # centre of W), then local search from the best of them
        w_star = sc.obj.project(np.asarray(best_w, dtype=np.float64))
        x, rho, f_first = recover_primal(sc, w_star, best_mu)
        x, moves = improve(sc, x, rho, pool=self.pool, pair_pool=self.pair_pool,
                           max_rounds=self.max_rounds, deadline=deadline)
        bound = sc.certified_bound(w_star, best_mu)
        value = red.value(x)
        floor = 1e-9 * max(abs(value), sc.sigma * 1e-6)
        status = "optimal" if value - bound <= floor else "feasible"
        info = {"iterations": iters, "dual_seconds": round(t_dual, 6),
                "primal_seconds": round(time.perf_counter() - t0 - t_dual, 6),
                "moves": moves, "first_objective": f_first * sc.sigma,
                "model_bound": None if not np.isfinite(ub) else ub * sc.sigma,
                "w": w_star.round(6).tolist(), "mu": best_mu * sc.sigma / sc.nu,
                "cuts": master.cuts}
        if timed_out:
            info["timed_out"] = True
        return Solution(status, x, bound, info)

