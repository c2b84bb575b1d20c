"""``milp``: the allocation as a cvxpy boolean MILP, solved by HiGHS.

One boolean per allowed (unit, bit-width), ``A x = 1`` per unit, group costs ``C = base + M x``,
the budget ``usage · x ≤ cap`` with ``cap`` a ``cp.Parameter`` (a ladder re-solves the compiled
problem with a new value, HiGHS warm-started from the previous solution), and the objective
``lo·C + d·sum_largest(C, q)``. Costs are divided by their scale and usage by its total so the
solver sees O(1) numbers; the assignment is rounded and checked against the exact integer budget
(a repair step guards against HiGHS's feasibility tolerance). The bound is HiGHS's MIP dual bound.
cvxpy is imported only here, when the back-end runs.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from fqopt.solvers._highs import silence_banner
from fqopt.solvers._lagrange import repair_budget
from fqopt.solvers._registry import Solver, register_solver
from fqopt.solvers._result import Solution


@dataclass
class _Compiled:
    problem: object
    x: object
    cap: object
    vs: np.ndarray
    ks: np.ndarray
    sigma: float
    nu: float


@register_solver("milp")
@dataclass
class MilpSolver(Solver):
    """cvxpy + HiGHS MILP (see the module docstring).

    mip_rel_gap: HiGHS's relative optimality tolerance; verbose: HiGHS's log;
    warm_start: reuse the previous solution in a ladder.
    """

    mip_rel_gap: float = 1e-9
    verbose: bool = False
    warm_start: bool = True
    _compiled: dict = field(default_factory=dict, init=False, repr=False)

    exact = True
    default_time_limit = 60.0

    def _build(self, red) -> _Compiled:
        # deferred: a solver library loads only when its back-end runs
        import cvxpy as cp
        import scipy.sparse as sp

        V = red.num_units
        obj = red.objective
        vs, ks = np.nonzero(red.allowed)
        n = vs.size
        mag = np.abs(red.costs).max(axis=2).sum(axis=0) + np.abs(red.base_costs)
        sigma = float(max(mag.max(), 1e-300))
        nu = float(max(red.usage.max(axis=1).sum(), 1))
        cols = np.arange(n)
        one = sp.csr_matrix((np.ones(n), (vs, cols)), shape=(V, n))
        M = sp.csr_matrix(red.costs[vs, :, ks].T / sigma)                     # [G, n]
        x = cp.Variable(n, boolean=True)
        cap = cp.Parameter(name="cap")
        C = red.base_costs / sigma + M @ x
        expr = (obj.lo @ M) @ x if np.any(obj.lo) else 0
        if not obj.is_linear:
            top = cp.max(C) if obj.q == 1 else cp.sum_largest(C, obj.q)
            expr = expr + obj.d * top
        constraints = [one @ x == 1, (red.usage[vs, ks] / nu) @ x <= cap]
        problem = cp.Problem(cp.Minimize(expr), constraints)
        return _Compiled(problem, x, cap, vs, ks, sigma, nu)

    def _solve(self, red, deadline) -> Solution:
        import cvxpy as cp  # deferred: a solver library loads only when its back-end runs

        t0 = time.perf_counter()
        silence_banner()
        comp = self._compiled.get(red.token)
        if comp is None:
            comp = self._build(red)
            self._compiled = {red.token: comp}   # keep one compiled problem
        comp.cap.value = red.free_cap / comp.nu
        opts = {"mip_rel_gap": float(self.mip_rel_gap), "mip_abs_gap": 1e-12,
                "output_flag": bool(self.verbose)}  # HiGHS prints a banner unless told not to
        if deadline is not None:
            opts["time_limit"] = max(deadline - time.perf_counter(), 0.01)
        info = {}
        try:
            with warnings.catch_warnings():
                # "solution may be inaccurate" after a time limit: the status says it already
                warnings.simplefilter("ignore", UserWarning)
                comp.problem.solve(solver=cp.HIGHS, warm_start=self.warm_start,
                                   verbose=self.verbose, **opts)
        except cp.error.SolverError as exc:
            info.update(timed_out=True, message=f"HiGHS failed: {exc}")
            return Solution("timeout", None, None, info)
        stats = comp.problem.solver_stats.extra_stats
        info.update(build_and_solve_seconds=round(time.perf_counter() - t0, 6),
                    cvxpy_status=comp.problem.status)
        base_lin = float(red.objective.lo @ red.base_costs)
        bound = None
        dual = getattr(stats, "mip_dual_bound", None)
        have_solution = (comp.x.value is not None
                         and getattr(stats, "primal_solution_status", 2) == 2)
        offset = 0.0
        if have_solution and stats is not None:
            # cvxpy may move constants out of the objective; recover them from its value
            offset = float(comp.problem.value) - float(stats.objective_function_value)
        if dual is not None and np.isfinite(dual):
            bound = base_lin + (float(dual) + offset) * comp.sigma
        if not have_solution:
            info["timed_out"] = True
            return Solution("timeout", None, bound, info)
        # per unit, the allowed column of largest value (HiGHS returns 0/1 within 1e-6)
        dense = np.full(red.allowed.shape, -np.inf)
        dense[comp.vs, comp.ks] = np.asarray(comp.x.value, dtype=np.float64)
        choice = dense.argmax(axis=1)
        if not red.is_feasible(choice):
            choice = repair_budget(red, choice)
            info["repaired"] = True
        status = "optimal" if comp.problem.status == cp.OPTIMAL else "feasible"
        if status == "feasible":
            info["timed_out"] = True
        return Solution(status, choice, bound, info)
