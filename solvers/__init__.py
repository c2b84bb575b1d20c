"""Allocation solvers (docs/design.md §4.3-4.4): one problem, many back-ends.

``AllocationProblem`` holds plain arrays and imports no solver library; ``solve(problem,
backend=...)`` returns an ``AllocationResult`` with a status, the objective recomputed from the
costs, a proven lower bound and the gap. Back-ends: ``lagrange`` (fqopt's own, certified, fast
at per-channel scale), ``cpsat`` (OR-Tools), ``milp`` (cvxpy + HiGHS), ``quantile`` (FairQuant's
rule, a baseline), ``exhaustive`` (tiny instances) and ``auto``. OR-Tools and cvxpy load only
when their back-end runs.
"""

from fqopt.solvers._objective import Objective
from fqopt.solvers._problem import BUDGET_KINDS, AllocationProblem
from fqopt.solvers._registry import (Solver, available_solvers, get_solver, register_solver,
                                     solve, solve_ladder)
from fqopt.solvers._result import AllocationResult

__all__ = ["AllocationProblem", "AllocationResult", "Objective", "Solver", "BUDGET_KINDS",
           "available_solvers", "get_solver", "register_solver", "solve", "solve_ladder"]
