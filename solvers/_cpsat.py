"""``cpsat``: OR-Tools CP-SAT, exact, with explicit integer scaling of the costs.

Model: one Boolean per allowed (unit, bit-width), ``add_exactly_one`` per unit, the budget as
one integer weighted sum (exact: usage is already an integer), and the objective
``f(C) = lo·C + d·topsum_q(C)`` linearised over integer-scaled costs:

- the linear part ``Σ_{v,k} round(s · Σ_g lo_g costs[v, g, k]) · x_vk``;
- ``q = 1`` (worst, blend): an integer ``t ≥ round(s·d·C_g)`` for every group, ``+ t``;
- ``q > 1`` (cvar): an integer ``t`` at least the sum of every q-subset of the scaled group
  costs (tight, and CP-SAT propagates it like a max); with more than ``max_subsets`` subsets,
  ``q·α + Σ_g β_g`` with ``β_g ≥ round(s·d·C_g) − α``, ``β_g ≥ 0`` (Rockafellar–Uryasev).

``s`` (integer units per cost unit) is the ``scale`` setting, by default ``magnitude`` divided by
the largest objective the costs could reach. Rounding moves any assignment's objective by at most
``rounding_error`` (reported in ``info``, in cost units), so the reported bound is CP-SAT's
bound / s minus that error: still a proven bound on the true optimum. Warm start: the hint is the
``lagrange`` solution (milliseconds) — and, being the incumbent CP-SAT starts from, it is
returned (with the better of the two certified bounds) when CP-SAT stops without improving on
it. Status: OPTIMAL → optimal, FEASIBLE → feasible, UNKNOWN → timeout (feasible when
warm-started). OR-Tools is imported only here, when the back-end runs.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field

import numpy as np

from fqopt.solvers._lagrange import LagrangeSolver
from fqopt.solvers._registry import Solver, register_solver
from fqopt.solvers._result import Solution


@dataclass
class _Scaled:
    s: float
    lin: np.ndarray        # int64 [V, K]
    top: np.ndarray | None  # int64 [V, G, K]
    top0: np.ndarray | None  # int64 [G]
    error: float           # max |objective change| from rounding, cost units


def scale_costs(red, scale: float | None, magnitude: float) -> _Scaled:
    """Integer costs for the linear and top-q parts of the objective, and the rounding error."""
    obj = red.objective
    lin_f = np.einsum("vgk,g->vk", red.costs, obj.lo)
    mask = red.allowed
    abs_lin = np.where(mask, np.abs(lin_f), 0.0).max(axis=1).sum()
    abs_top = 0.0
    if not obj.is_linear:
        per_g = np.where(mask[:, None, :], np.abs(red.costs), 0.0).max(axis=2).sum(axis=0)
        abs_top = obj.q * obj.d * float((per_g + np.abs(red.base_costs)).max())
    total = abs_lin + abs_top
    s = float(scale) if scale else (magnitude / total if total > 0 else 1.0)
    lin = np.rint(s * lin_f)
    err = float(np.where(mask, np.abs(lin - s * lin_f), 0.0).max(axis=1).sum())
    top = top0 = None
    if not obj.is_linear:
        t_f = s * obj.d * red.costs
        top = np.rint(t_f)
        t0_f = s * obj.d * red.base_costs
        top0 = np.rint(t0_f)
        per_g = np.where(mask[:, None, :], np.abs(top - t_f), 0.0).max(axis=2).sum(axis=0)
        err += obj.q * float((per_g + np.abs(top0 - t0_f)).max())
        top, top0 = top.astype(np.int64), top0.astype(np.int64)
    return _Scaled(s=s, lin=lin.astype(np.int64), top=top, top0=top0, error=err / s)


@register_solver("cpsat")
@dataclass
class CpSatSolver(Solver):
    """OR-Tools CP-SAT (see the module docstring).

    num_workers: search workers; 0 picks one worker up to ``small_units`` super-units (CP-SAT's
        single search proves such instances in a fraction of a second, where starting a
        portfolio costs more than it gains) and one per CPU core above.
    random_seed: CP-SAT's seed.
    scale: integer units per cost unit (None: ``magnitude`` / largest possible objective; the
        default 1e12 keeps the rounding error near 1e-10 relative, far inside int64).
    warm_start: hint CP-SAT with the ``lagrange`` solution; None hints above ``small_units``
        super-units only (below, CP-SAT finds good solutions at once and the hint's time is
        wasted).
    max_subsets: largest number of q-subsets written out for ``cvar`` objectives.
    presolve: CP-SAT's presolve; None switches it off up to ``no_presolve_units`` super-units
        (layer granularity: there it takes half of a 10 ms solve and shortens nothing).
    log: print CP-SAT's search log.
    """

    num_workers: int = 0
    random_seed: int = 0
    scale: float | None = None
    magnitude: float = 1e12
    warm_start: bool | None = None
    small_units: int = 1000
    max_subsets: int = 500
    presolve: bool | None = None
    no_presolve_units: int = 64
    log: bool = False
    _lagrange: object = field(default=None, init=False, repr=False)

    exact = True
    default_time_limit = 60.0

    def _solve(self, red, deadline, hint: Solution | None = None) -> Solution:
        """``hint``: a solution to start from (``auto`` passes lagrange's), else per
        ``warm_start``."""
        # deferred: a solver library loads only when its back-end runs
        from ortools.sat.python import cp_model

        t0 = time.perf_counter()
        V, G, _ = red.costs.shape
        obj = red.objective
        sc = scale_costs(red, self.scale, self.magnitude)
        small = V <= self.small_units
        if hint is None and (self.warm_start or (self.warm_start is None and not small)):
            if self._lagrange is None:
                self._lagrange = LagrangeSolver()
            hint = self._lagrange._solve(red, deadline)

        model = cp_model.CpModel()
        vs, ks = np.nonzero(red.allowed)
        xs = [model.new_bool_var(f"x{v}_{k}") for v, k in zip(vs.tolist(), ks.tolist())]
        starts = np.searchsorted(vs, np.arange(V + 1))
        for v in range(V):
            model.add_exactly_one(xs[starts[v]:starts[v + 1]])
        wsum = cp_model.LinearExpr.weighted_sum
        model.add(wsum(xs, red.usage[vs, ks].tolist()) <= int(red.free_cap))
        terms = [wsum(xs, sc.lin[vs, ks].tolist())]
        if not obj.is_linear:
            group = [wsum(xs, sc.top[vs, g, ks].tolist()) + int(sc.top0[g]) for g in range(G)]
            lo_g = [int(sc.top0[g] + _extreme(sc.top[:, g, :], red.allowed, np.min))
                    for g in range(G)]
            hi_g = [int(sc.top0[g] + _extreme(sc.top[:, g, :], red.allowed, np.max))
                    for g in range(G)]
            subsets = list(itertools.combinations(range(G), obj.q))
            if len(subsets) <= self.max_subsets:
                # top-q sum = max over q-subsets of their sum: tight, propagates like a max
                t = model.new_int_var(sum(sorted(lo_g)[:obj.q]), sum(sorted(hi_g)[-obj.q:]), "t")
                for sub in subsets:
                    model.add(sum(group[g] for g in sub) <= t)
                terms.append(t)
            else:
                alpha = model.new_int_var(min(lo_g), max(hi_g), "alpha")
                span = max(hi_g) - min(lo_g)
                betas = [model.new_int_var(0, span, f"beta{g}") for g in range(G)]
                for g in range(G):
                    model.add(betas[g] >= group[g] - alpha)
                terms.append(obj.q * alpha)
                terms.extend(betas)
        model.minimize(sum(terms))
        if hint is not None:
            for x, v, k in zip(xs, vs.tolist(), ks.tolist()):
                model.add_hint(x, int(hint.choice[v] == k))

        solver = cp_model.CpSolver()
        p = solver.parameters
        p.num_workers = int(self.num_workers) or (1 if small else (os.cpu_count() or 1))
        p.random_seed = int(self.random_seed)
        p.log_search_progress = bool(self.log)
        p.cp_model_presolve = (bool(self.presolve) if self.presolve is not None
                               else V > self.no_presolve_units)
        if deadline is not None:
            p.max_time_in_seconds = max(deadline - time.perf_counter(), 0.01)
        t_build = time.perf_counter() - t0
        status = solver.solve(model)
        name = solver.status_name(status)
        info = {"scale": float(sc.s), "rounding_error": float(sc.error),
                "build_seconds": round(t_build, 6),
                "cpsat_status": name, "warm_start": hint is not None}
        if hint is not None:
            info["hint_objective"] = red.value(hint.choice)
            info["hint_timed_out"] = bool(hint.info.get("timed_out", False))
        base_lin = float(obj.lo @ red.base_costs)
        bound = None
        if np.isfinite(solver.best_objective_bound):
            bound = base_lin + solver.best_objective_bound / sc.s - sc.error
        choice = None
        if name in ("OPTIMAL", "FEASIBLE"):
            values = np.array([solver.boolean_value(x) for x in xs], dtype=bool)
            choice = np.zeros(V, dtype=np.int64)
            choice[vs[values]] = ks[values]
            if name == "OPTIMAL":
                return Solution("optimal", choice, bound, info)
        if hint is not None and name in ("FEASIBLE", "UNKNOWN"):
            # warm-started: the hint is the incumbent CP-SAT starts from, and lagrange's bound
            # is as certified as CP-SAT's; keep whichever is better
            if hint.bound is not None and (bound is None or hint.bound > bound):
                bound = hint.bound
            if choice is None or red.value(hint.choice) < red.value(choice):
                choice = hint.choice
                info["incumbent"] = "lagrange hint"
        if choice is not None:
            if deadline is not None and time.perf_counter() >= deadline:
                info["timed_out"] = True
            return Solution("feasible", choice, bound, info)
        if name == "INFEASIBLE":  # pragma: no cover - the budget was checked before
            return Solution("infeasible", None, None, info)
        if name == "MODEL_INVALID":  # pragma: no cover - a bug in this module
            raise RuntimeError(f"CP-SAT rejected the model: {model.validate()}")
        info["timed_out"] = True
        return Solution("timeout", None, bound, info)


def _extreme(a: np.ndarray, allowed: np.ndarray, fn) -> int:
    fill = np.iinfo(np.int64).max if fn is np.min else np.iinfo(np.int64).min
    return int(fn(np.where(allowed, a, fill), axis=1).sum())
