"""The conformance suite every allocation back-end runs (tiny instances, brute-forced optima).

Exact back-ends (exhaustive, cpsat, milp) must equal the optimum; ``lagrange`` must return a
feasible assignment no better than the optimum, a bound never above it, and an objective within
its reported gap of that bound; ``quantile`` must be feasible. All of them keep the budget, pins,
min/max bits and ties exactly, report the objective recomputed from the costs, and report an
infeasible budget with the smallest feasible value.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from fqopt.solvers import get_solver, solve
from fqopt.solvers.testing import (TEST_OBJECTIVES, brute_force, brute_min_budget,
                                   random_problem)

BACKENDS = ("exhaustive", "cpsat", "milp", "lagrange", "quantile", "auto")
KINDS = ("avg_bits", "size_bytes", "bops")

# (seed, objective, flags): every objective, every budget kind, pins, ties, bounds, +inf costs,
# negative costs, each at least once
CASES = []
for i in range(30):
    CASES.append((100 + i, TEST_OBJECTIVES[i % 5], dict(
        budget_kind=KINDS[i % 3], pins=i % 4 == 1, ties=i % 3 == 2, bounds=i % 5 == 3,
        forbid=i % 7 == 4, negative=i % 6 == 5)))
# degenerate instances, as real profiled tables are: zero-cost units and units costing in one
# group only, exact ties, costs around 1e-9, budgets that do not bind
for i in range(12):
    CASES.append((200 + i, TEST_OBJECTIVES[i % 5], dict(
        budget_kind=KINDS[i % 3], zero=True, equal=i % 2 == 1, pins=i % 4 == 3,
        scale=1e-9 if i % 3 != 2 else 1.0,
        budget_fraction=1.0 if i % 4 < 2 else None)))


def _case_id(case):
    seed, obj, flags = case
    on = [k for k, v in flags.items() if v is True]
    if flags.get("scale", 1.0) != 1.0:
        on.append(f"x{flags['scale']:g}")
    if flags.get("budget_fraction") == 1.0:
        on.append("loose")
    return f"{seed}-{obj}-{flags['budget_kind']}" + ("-" + "+".join(on) if on else "")


@functools.lru_cache(maxsize=None)
def _instance(index: int):
    seed, objective, flags = CASES[index]
    problem = random_problem(seed, objective=objective, **flags)
    opt, _ = brute_force(problem)
    return problem, opt


def _options(backend, problem):
    if backend == "quantile":  # FairQuant's rule over the problem's own bit-widths
        k = problem.num_bits
        return {"bits": tuple(problem.bits.tolist()), "shares": (1.0 / k,) * k}
    return {}


def _scale(problem, opt):
    return max(abs(opt), 1e-6 * problem.cost_scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index", range(len(CASES)), ids=[_case_id(c) for c in CASES])
def test_backend_against_brute_force(backend, index):
    problem, opt = _instance(index)
    res = solve(problem, backend, **_options(backend, problem))
    assert res.ok, res
    tol = 1e-7 * _scale(problem, opt)
    # the assignment keeps every constraint exactly (budget, pins, min/max bits, ties) ...
    problem.check_feasible(res.assignment)
    assert res.budget_used == problem.budget_used(res.assignment)
    assert problem.usage(res.assignment) <= problem.cap
    # ... and the reported objective is the one recomputed from the costs
    assert res.objective == problem.evaluate(res.assignment)
    np.testing.assert_array_equal(res.group_costs, problem.group_costs(res.assignment))
    assert res.objective >= opt - tol
    if get_solver(res.backend).exact:
        assert res.status == "optimal"
        assert res.objective == pytest.approx(opt, rel=1e-7, abs=tol)
    if backend == "quantile":
        assert res.bound is None and res.gap is None and res.status == "feasible"
        return
    assert res.bound is not None
    assert res.bound <= opt + tol, "a proven lower bound above the optimum"
    denom = max(abs(res.objective), 1e-6 * problem.cost_scale)
    assert res.objective - res.bound <= res.gap * denom + tol


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index", range(0, len(CASES), 4))
def test_infeasible_budget_reports_smallest_feasible(backend, index):
    problem, _ = _instance(index)
    least = brute_min_budget(problem)
    assert problem.min_budget() == pytest.approx(least, rel=1e-12)
    step = 1e-3 if problem.budget_kind == "avg_bits" else 1
    below = problem.with_budget(least - step)
    res = solve(below, backend, **_options(backend, problem))
    assert res.status == "infeasible"
    assert res.assignment is None and res.objective is None
    assert res.info["min_budget"] == pytest.approx(least, rel=1e-12)
    assert "at least" in res.message
    # the smallest feasible value itself is feasible
    at = solve(problem.with_budget(problem.min_budget()), backend,
               **_options(backend, problem))
    assert at.ok and at.budget_used <= problem.min_budget() + 1e-12


@pytest.mark.parametrize("objective", TEST_OBJECTIVES)
def test_lagrange_bound_never_above_optimum_many_seeds(objective):
    # a denser sweep for the one inexact certified back-end
    for seed in range(40):
        problem = random_problem(1000 + seed, objective=objective, max_units=5, max_groups=3,
                                 negative=seed % 3 == 0, ties=seed % 4 == 0)
        opt, _ = brute_force(problem)
        res = solve(problem, "lagrange")
        tol = 1e-9 * _scale(problem, opt)
        assert res.bound <= opt + tol
        assert res.objective >= opt - tol
        problem.check_feasible(res.assignment)


@pytest.mark.parametrize("backend", BACKENDS)
def test_degenerate_problems(backend):
    from fqopt.solvers import AllocationProblem

    zeros = AllocationProblem(costs=np.zeros((5, 2, 3)), bits=[2, 4, 8], sizes=np.arange(1, 6),
                              budget=4)
    res = solve(zeros, backend, **_options(backend, zeros))
    assert res.ok and res.objective == 0.0
    assert res.budget_used <= 4
    # every unit pinned: the one assignment is optimal, its objective its own bound
    fixed = AllocationProblem(costs=np.arange(18.0).reshape(2, 3, 3), bits=[2, 4, 8],
                              sizes=[1, 2], budget=8, pins={0: 2, 1: 8})
    res = solve(fixed, backend, **_options(backend, fixed))
    assert res.status == "optimal" and res.assignment.tolist() == [2, 8]
    assert res.bound == res.objective == fixed.evaluate(np.array([2, 8]))
