"""fqopt.solvers: the problem, its objectives and budgets, each back-end's own behaviour."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from fqopt.errors import UserError
from fqopt.plan import plan_size_bytes
from fqopt.sensitivity import SensitivityTable, table_unit_set
from fqopt.solvers import (AllocationProblem, Objective, available_solvers, get_solver, solve,
                           solve_ladder)
from fqopt.solvers.testing import brute_force, random_problem

BITS = np.array([2, 3, 4, 6, 8])


def channel_table(G=3, layers=(("conv1", (8, 3, 3, 3)), ("layer1.conv", (16, 8, 3, 3)),
                               ("layer2.conv", (16, 16, 1, 1)), ("fc", (10, 16))),
                  pinned=None, ties=None, seed=0, scores=None):
    """A small per-channel table with real-looking meta (shapes, pins, float params)."""
    rng = np.random.default_rng(seed)
    units, sizes, macs = [], [], []
    for name, shape in layers:
        n, per = shape[0], int(np.prod(shape)) // shape[0]
        units += [f"{name}[{c}]" for c in range(n)]
        sizes += [per] * n
        macs += [per * 49] * n
    sizes = np.array(sizes)
    costs = (sizes[:, None, None] * rng.lognormal(0, 1, (len(units), G, 1))
             * 4.0 ** -BITS.astype(float))
    meta = {"model": "tiny", "granularity": "channel",
            "shapes": {n: list(s) for n, s in layers},
            "pinned": {"conv1": 8, "fc": 8} if pinned is None else pinned,
            "ties": ties or [], "float_params": 123}
    if scores is not None:
        meta["scores"] = scores
    return SensitivityTable(costs=costs, bits=BITS, sizes=sizes, units=units,
                            groups=[f"g{g}" for g in range(G)],
                            group_counts=rng.integers(1, 50, G), macs=np.array(macs), meta=meta)


# ------------------------------------------------------------------------- objectives
def test_objectives_match_their_definitions():
    rng = np.random.default_rng(0)
    C = rng.normal(size=(50, 5))
    counts = np.array([5, 1, 1, 2, 1])
    top = -np.sort(-C, axis=1)
    np.testing.assert_allclose(Objective.parse("worst", 5)(C), C.max(1))
    np.testing.assert_allclose(Objective.parse("balanced", 5)(C), C.mean(1))
    np.testing.assert_allclose(Objective.parse("mean", 5, counts)(C), C @ counts / 10)
    np.testing.assert_allclose(Objective.parse("blend:0.3", 5)(C),
                               0.7 * C.mean(1) + 0.3 * C.max(1))
    for alpha, k in ((0.2, 1), (0.21, 2), (0.5, 3), (0.6, 3), (0.8, 4), (1.0, 5)):
        np.testing.assert_allclose(Objective.parse(f"cvar:{alpha}", 5)(C),
                                   top[:, :k].mean(1), err_msg=f"cvar:{alpha}")
    np.testing.assert_allclose(Objective.parse("cvar:1", 5)(C), C.mean(1))
    np.testing.assert_allclose(Objective.parse("blend:1", 5)(C), C.max(1))


@pytest.mark.parametrize("spec", ["worst", "balanced", "blend:0.4", "cvar:0.5", "cvar:0.34"])
def test_objective_is_max_over_its_dual_set(spec):
    """f(C) = max_{w ∈ W} w·C: the maximiser is in W, attains f, and random w ∈ W do not beat
    it; the projection lands in W."""
    obj = Objective.parse(spec, 4)
    rng = np.random.default_rng(1)
    for _ in range(20):
        C = rng.normal(size=4)
        w = obj.weights(C)
        assert w.sum() == pytest.approx(1.0)
        assert np.all(w >= obj.lo - 1e-12) and np.all(w <= obj.hi + 1e-12)
        assert w @ C == pytest.approx(obj(C))
        p = obj.project(rng.normal(size=4))
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
        assert np.all(p >= obj.lo - 1e-15) and np.all(p <= obj.hi + 1e-15)
        assert p @ C <= obj(C) + 1e-12



@pytest.mark.parametrize("spec", ["worst", "blend:0.4", "cvar:0.5", "cvar:0.34"])
def test_projection_satisfies_the_kkt_conditions(spec):
    """p = project(w) is the Euclidean projection onto W: p = clip(w − τ, lo, hi) for one τ,
    and Σp = 1 (exactly the optimality conditions of min ||p − w||² over the capped simplex)."""
    obj = Objective.parse(spec, 5)
    rng = np.random.default_rng(2)
    for scale in (1e-3, 1.0, 50.0):
        for _ in range(30):
            w = rng.normal(size=5) * scale
            p = obj.project(w)
            assert p.sum() == pytest.approx(1.0, abs=1e-12)
            inside = (p > obj.lo + 1e-12) & (p < obj.hi - 1e-12)
            tau = (w - p)[inside].mean() if inside.any() else None
            if tau is None:  # every coordinate at a bound: some τ separates them
                lo_side, hi_side = (w - p)[p <= obj.lo + 1e-12], (w - p)[p >= obj.hi - 1e-12]
                assert lo_side.size == 0 or hi_side.size == 0 or lo_side.max() <= \
                    hi_side.min() + 1e-9 * scale
                continue
            np.testing.assert_allclose((w - p)[inside], tau, atol=1e-9 * scale)
            assert np.all(w[p <= obj.lo + 1e-12] - tau <= obj.lo[p <= obj.lo + 1e-12] + 1e-9)
            assert np.all(w[p >= obj.hi - 1e-12] - tau >= obj.hi[p >= obj.hi - 1e-12] - 1e-9)

@pytest.mark.parametrize("spec, fragment", [
    ("max", "unknown objective 'max'"), ("blend:2", "λ must lie in [0, 1]"),
    ("cvar:0", "α must lie in (0, 1]"), ("cvar:x", "needs a number"),
    ("worst:3", "takes no parameter")])
def test_bad_objectives_are_user_errors(spec, fragment):
    with pytest.raises(UserError, match=None) as e:
        Objective.parse(spec, 3)
    assert fragment in str(e.value)


def test_mean_objective_needs_group_counts():
    with pytest.raises(UserError, match="group_counts"):
        AllocationProblem(costs=np.ones((2, 2, 2)), bits=[2, 4], sizes=[1, 1], budget=3,
                          objective="mean")


# ------------------------------------------------------------------------- the problem
def test_evaluate_and_budgets_follow_the_formulas():
    rng = np.random.default_rng(3)
    costs = rng.random((4, 2, 3))
    sizes = np.array([10, 20, 30, 40])
    macs = np.array([100, 0, 7, 9])
    p = AllocationProblem(costs=costs, bits=[2, 4, 8], sizes=sizes, budget=5.0, macs=macs,
                          objective="balanced")
    a = np.array([2, 8, 4, 4])
    k = np.array([0, 2, 1, 1])
    C = costs[np.arange(4), :, k].sum(0)
    np.testing.assert_allclose(p.group_costs(a), C)
    assert p.evaluate(a) == pytest.approx(C.mean())
    assert p.budget_used(a) == pytest.approx((a * sizes).sum() / sizes.sum())
    b = p.budget_used(a)
    assert p.with_budget(b).is_feasible(a)             # a budget equal to the usage is met
    assert not p.with_budget(b - 1e-9).is_feasible(a)
    pb = AllocationProblem(costs=costs, bits=[2, 4, 8], sizes=sizes, budget=1e9, macs=macs,
                           budget_kind="bops", activation_bits=8)
    assert pb.budget_used(a) == (macs * a * 8).sum()
    ps = AllocationProblem(costs=costs, bits=[2, 4, 8], sizes=sizes, budget=1e9,
                           budget_kind="size_bytes", size_overhead=17)
    assert ps.budget_used(a) == math.ceil((a * sizes).sum() / 8) + 17
    assert ps.with_budget(ps.budget_used(a)).is_feasible(a)
    assert not ps.with_budget(ps.budget_used(a) - 1).is_feasible(a)


def test_size_bytes_budget_matches_the_plan_size():
    table = channel_table()
    units = table_unit_set(table)
    p = AllocationProblem.from_table(table, budget=10**9, budget_kind="size_bytes")
    rng = np.random.default_rng(0)
    a = rng.choice(BITS, size=len(units))
    for name, b in units.pinned_units().items():
        a[units.names.index(name)] = b
    layer_bits = {layer: a[sl] for layer, sl in units.unit_slices().items()}
    assert p.budget_used(a) == plan_size_bytes(units, layer_bits)
    res = solve(p.with_budget(plan_size_bytes(units, layer_bits)), "lagrange")
    plan = res.to_plan(table)
    assert plan.size_bytes <= plan_size_bytes(units, layer_bits)
    assert plan.size_bytes == res.budget_used


def test_bops_budget_needs_macs():
    with pytest.raises(UserError, match="MACs"):
        AllocationProblem(costs=np.ones((2, 1, 2)), bits=[2, 4], sizes=[1, 1], budget=3,
                          budget_kind="bops")
    with pytest.raises(UserError, match="unknown budget kind"):
        AllocationProblem(costs=np.ones((2, 1, 2)), bits=[2, 4], sizes=[1, 1], budget=3,
                          budget_kind="bits")


@pytest.mark.parametrize("costs, fragment", [
    (np.ones((2, 2)), "[U, G, K]"),
    (np.array([[[1.0, np.nan]], [[1.0, 1.0]]]), "is nan"),
])
def test_bad_costs_are_user_errors(costs, fragment):
    with pytest.raises(UserError) as e:
        AllocationProblem(costs=costs, bits=[2, 4], sizes=[1, 1], budget=3)
    assert fragment in str(e.value)


def test_pins_bounds_and_inf_costs_restrict_choices():
    costs = np.ones((3, 1, 3))
    costs[2, 0, 0] = np.inf
    p = AllocationProblem(costs=costs, bits=[2, 4, 8], sizes=[1, 1, 1], budget=8,
                          pins={0: 4}, min_bits=[2, 4, 2], max_bits=8)
    np.testing.assert_array_equal(p.allowed, [[0, 1, 0], [0, 1, 1], [0, 1, 1]])
    with pytest.raises(UserError, match="pinned to 4 bits") as e:
        p.check_feasible(np.array([8, 4, 4]))
    assert "'unit 0'" in str(e.value)
    with pytest.raises(UserError, match="not a candidate"):
        p.check_feasible(np.array([4, 5, 4]))
    with pytest.raises(UserError, match="not a candidate bit-width"):
        AllocationProblem(costs=costs, bits=[2, 4, 8], sizes=[1, 1, 1], budget=8, pins={0: 3})
    with pytest.raises(UserError, match="no allowed bit-width"):
        AllocationProblem(costs=costs, bits=[2, 4, 8], sizes=[1, 1, 1], budget=8,
                          min_bits=[2, 2, 9])


def test_ties_are_merged_and_enforced():
    rng = np.random.default_rng(5)
    p = AllocationProblem(costs=rng.random((5, 2, 3)), bits=[2, 4, 8], sizes=[1, 2, 3, 4, 5],
                          budget=4.0, ties=[[0, 3], [3, 4]], pins={1: 8})
    red = p.reduced()
    assert red.num_units == 2                     # {0, 3, 4} and {2}; unit 1 is fixed
    assert red.base_usage == 2 * 8
    with pytest.raises(UserError, match="tied units"):
        p.check_feasible(np.array([2, 8, 2, 4, 2]))
    res = solve(p, "exhaustive")
    assert len(set(res.assignment[[0, 3, 4]].tolist())) == 1
    assert res.objective == pytest.approx(brute_force(p)[0])
    with pytest.raises(UserError, match="no common allowed bit-width"):
        AllocationProblem(costs=np.ones((2, 1, 2)), bits=[2, 4], sizes=[1, 1], budget=3,
                          ties=[[0, 1]], pins={0: 2, 1: 4}).reduced()


def test_from_table_reads_pins_ties_and_names():
    table = channel_table(ties=[["layer1.conv", "layer2.conv"]])
    units = table_unit_set(table)
    p = AllocationProblem.from_table(table, budget=4.0)
    conv1 = [i for i, n in enumerate(units.names) if n.startswith("conv1[")]
    assert all(p.allowed[i].tolist() == (BITS == 8).tolist() for i in conv1)
    assert len(p.ties) == 16 and p.reduced().num_units == 16
    free = AllocationProblem.from_table(table, budget=4.0, pins="none", ties=None)
    assert free.reduced().num_units == len(units)
    custom = AllocationProblem.from_table(table, budget=4.0, pins={"fc[3]": 2, "conv1": 6},
                                          min_bits={"layer1.conv": 4}, ties=None)
    assert custom.allowed[units.names.index("fc[3]")].tolist() == (BITS == 2).tolist()
    assert not custom.allowed[units.names.index("layer1.conv[0]")][:2].any()
    with pytest.raises(UserError, match="neither a unit nor a layer"):
        AllocationProblem.from_table(table, budget=4.0, pins={"nope": 8})
    assert p.size_overhead == 4 * len(units) + 4 * 123


def test_min_budget_and_infeasible_result():
    table = channel_table()
    p = AllocationProblem.from_table(table, budget=2.0)
    units = table_unit_set(table)
    pinned = np.isin(np.arange(len(units)),
                     [units.names.index(n) for n in units.pinned_units()])
    least = (np.where(pinned, 8, 2) * units.sizes).sum() / units.sizes.sum()
    assert p.min_budget() == pytest.approx(least)
    assert not p.is_budget_feasible
    res = solve(p, "lagrange")
    assert res.status == "infeasible" and res.info["min_budget"] == pytest.approx(least)
    assert f"{least:.6g}" in res.message
    with pytest.raises(UserError, match="no plan to write"):
        res.to_plan(table)


# ------------------------------------------------------------------------- registry
def test_registry_lists_and_rejects():
    assert set(available_solvers()) >= {"lagrange", "cpsat", "milp", "quantile", "exhaustive",
                                        "auto"}
    with pytest.raises(UserError, match="unknown solver 'gurobi'; expected one of"):
        get_solver("gurobi")
    with pytest.raises(UserError, match="has no option"):
        get_solver("lagrange", num_workers=2)
    with pytest.raises(UserError, match="time limit"):
        solve(random_problem(0), "lagrange", time_limit=0)


def test_import_loads_no_solver_library():
    # importing and listing load no solver library; the Lagrangian back-end then loads only
    # HiGHS (its master LP), and its copyright banner does not reach stdout
    code = ("import sys, numpy as np\n"
            "libs = ('ortools', 'cvxpy', 'highspy', 'torch')\n"
            "import fqopt.solvers as s\n"
            "from fqopt.solvers.testing import random_problem\n"
            "s.available_solvers()\n"
            "print([m for m in libs if m in sys.modules])\n"
            "r = s.solve(random_problem(1), 'lagrange')\n"
            "print([m for m in libs if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.splitlines() == ["[]", "['highspy']"]


# ------------------------------------------------------------------------- results and plans
def test_result_to_plan_fills_solver_budget_and_prediction():
    table = channel_table()
    p = AllocationProblem.from_table(table, budget=4.5, objective="blend:0.5")
    res = solve(p, "cpsat")
    plan = res.to_plan(table)
    assert plan.model == "tiny" and plan.granularity == "channel"
    assert plan.budget == {"kind": "avg_bits", "value": 4.5}
    assert plan.objective == "blend:0.5"
    assert plan.avg_bits <= 4.5 + 1e-12
    assert plan.solver["backend"] == "cpsat" and plan.solver["status"] == "optimal"
    assert plan.solver["objective"] == res.objective
    assert plan.solver["bound"] <= res.objective
    assert plan.predicted == {g: pytest.approx(c) for g, c in
                              zip(table.groups, p.group_costs(res.assignment))}
    units = table_unit_set(table)
    np.testing.assert_array_equal(plan.unit_bits(units), res.assignment)


def large_problem(U, G, budget, seed, max_size):
    """U channel-like units with realistic costs (∝ size · 4^−b, lognormal unit/group factors)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(9, max_size, U)
    costs = (sizes * rng.lognormal(0, 1, U))[:, None, None] * rng.lognormal(0, .3, (U, G, 1)) \
        * 4.0 ** -BITS.astype(float)
    return AllocationProblem(costs=costs, bits=BITS, sizes=sizes, budget=budget)


def test_lagrange_at_channel_scale_has_a_tiny_certified_gap():
    p = large_problem(8000, 4, 3.7, seed=0, max_size=4608)
    res = solve(p, "lagrange")
    assert res.gap < 1e-4
    assert res.bound <= res.objective
    assert (res.assignment * p.sizes).sum() <= 3.7 * p.sizes.sum()
    assert res.seconds < 20  # ~0.1 s; loose for a shared 2-core machine


def test_lagrange_handles_negative_costs_and_a_loose_budget():
    p = random_problem(7, negative=True, budget_fraction=1.0, max_units=6)
    res = solve(p, "lagrange")
    opt, _ = brute_force(p)
    assert res.objective == pytest.approx(opt)
    assert res.bound <= opt + 1e-9 * max(abs(opt), 1)


# ------------------------------------------------------------------------- ladders
def test_ladder_reuses_work_and_matches_cold_solves():
    table = channel_table(G=2, seed=4)
    p = AllocationProblem.from_table(table, budget=3.5)
    budgets = [3.5, 4.0, 4.5, 5.5]
    seen = []
    warm = solve_ladder(p, budgets, "lagrange", callback=lambda i, n, r: seen.append((i, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    cuts = [r.info["cuts"] for r in warm]
    assert cuts == sorted(cuts) and cuts[-1] > cuts[0]     # the cuts carry over
    for b, r in zip(budgets, warm):
        cold = solve(p.with_budget(b), "cpsat")
        assert r.budget_used <= b + 1e-12
        assert r.bound <= cold.objective + 1e-9 * cold.objective
        assert r.objective >= cold.objective - 1e-9 * cold.objective



def test_lagrange_shares_its_master_across_objectives_and_budgets():
    """One solver instance over a problem family (``with_objective`` × ``with_budget``): the
    cuts carry over between objectives, and every answer stays certified against CP-SAT's
    optimum (bound ≤ optimum ≤ objective)."""
    table = channel_table(G=3, seed=5)
    base = AllocationProblem.from_table(table, budget=4.0)
    solver = get_solver("lagrange")
    cuts = []
    for spec in ("worst", "blend:0.3", "cvar:0.5", "balanced", "worst"):
        same = base.with_objective(spec)
        fresh = AllocationProblem.from_table(table, budget=4.0, objective=spec)
        assert same.objective == fresh.objective
        assert same.reduced().family is base.reduced().family
        for b in (4.0, 5.0):
            r = solver.solve(same.with_budget(b))
            cold = solve(fresh.with_budget(b), "cpsat")
            assert r.objective == pytest.approx(float(fresh.objective_fn(r.group_costs)))
            assert r.bound <= cold.objective + 1e-9 * abs(cold.objective)
            assert r.objective >= cold.objective - 1e-9 * abs(cold.objective)
            cuts.append(r.info["cuts"])
    assert cuts == sorted(cuts) and cuts[-1] > cuts[1]


def test_lagrange_master_drops_its_oldest_cuts_at_the_limit():
    from fqopt.solvers._lagrange import _Master

    m = _Master(3, max_cuts=6)
    rng = np.random.default_rng(0)
    for _ in range(20):
        m.add(rng.random(3), float(rng.random()))
        assert m.cuts <= 6 and m.h.getNumRow() == m.cuts + 1
    w, mu, val = m.solve(np.zeros(3), np.ones(3), 2.0, 0.5)
    assert w.sum() == pytest.approx(1.0) and 0.0 <= mu <= 2.0 and np.isfinite(val)

def test_milp_ladder_compiles_once_with_a_budget_parameter():
    p = random_problem(11, max_units=6, objective="cvar:0.5")
    solver = get_solver("milp")
    budgets = np.linspace(p.min_budget(), p.max_budget(), 4)
    for b in budgets:
        q = p.with_budget(b)
        res = solver.solve(q)
        assert res.objective == pytest.approx(brute_force(q)[0], rel=1e-7, abs=1e-12)
    assert len(solver._compiled) == 1
    (comp,) = solver._compiled.values()
    assert comp.cap.value == pytest.approx(p.with_budget(budgets[-1]).reduced().free_cap
                                           / comp.nu)


# ------------------------------------------------------------------------- back-end specifics
def test_cpsat_reports_rounding_and_keeps_the_bound_certified():
    p = random_problem(21, objective="worst", max_units=6)
    opt, _ = brute_force(p)
    coarse = solve(p, "cpsat", scale=3.0 / p.cost_scale)   # a deliberately crude scaling
    assert coarse.info["rounding_error"] > 0
    assert coarse.bound <= opt + 1e-12
    fine = solve(p, "cpsat")
    assert fine.info["rounding_error"] < 1e-9 * p.cost_scale
    assert fine.objective == pytest.approx(opt, rel=1e-9)


def test_cpsat_time_limit_is_honoured():
    p = large_problem(3000, 6, 3.3, seed=2, max_size=500)
    res = solve(p, "cpsat", time_limit=0.3, warm_start=False)
    assert res.seconds < 15
    assert res.status in ("feasible", "timeout", "optimal")
    if res.ok:
        p.check_feasible(res.assignment)
    # warm-started, the lagrange hint is the incumbent: never worse, never without a plan (the
    # hint shares the time limit, so under load it may be cut short: compare with the hint)
    hinted = solve(p, "cpsat", time_limit=4, warm_start=True)
    assert hinted.ok and hinted.objective <= hinted.info["hint_objective"] * (1 + 1e-12)
    lag = solve(p, "lagrange")
    if not hinted.info["hint_timed_out"]:  # the hint had all the time it wanted: lagrange's plan
        assert hinted.info["hint_objective"] == pytest.approx(lag.objective, rel=1e-12)
        assert hinted.bound >= lag.bound - 1e-9 * abs(lag.bound)


def test_exhaustive_refuses_large_instances():
    p = AllocationProblem(costs=np.ones((30, 1, 5)), bits=BITS, sizes=np.ones(30), budget=4)
    with pytest.raises(UserError, match="exceeds its limit"):
        solve(p, "exhaustive")


def test_auto_keeps_certified_lagrange_and_closes_its_gap_with_cpsat():
    problems = [random_problem(s, max_units=8) for s in range(60)]
    lag = [solve(p, "lagrange") for p in problems]
    certified = [p for p, r in zip(problems, lag) if r.status == "optimal"]
    open_gap = [p for p, r in zip(problems, lag) if r.status != "optimal"]
    assert certified and open_gap
    res = solve(certified[0], "auto")
    assert res.backend == "lagrange" and res.info["selected_by"] == "auto"
    for p in open_gap[:5]:
        res = solve(p, "auto")
        assert res.backend == "cpsat" and res.status == "optimal"
        assert res.objective == pytest.approx(solve(p, "exhaustive").objective, rel=1e-9)
    # beyond the sizes CP-SAT is given, auto stays with lagrange's plan
    res = solve(open_gap[0], "auto", exact_units=0, max_exact_units=0)
    assert res.backend == "lagrange"


def test_a_backend_optimal_without_a_certified_gap_is_reported_feasible():
    from fqopt.solvers._registry import Solver, register_solver
    from fqopt.solvers._result import Solution

    @register_solver("_liar")
    class Liar(Solver):
        def _solve(self, red, deadline):  # the lowest bits, called optimal with a weak bound
            x = red.min_choice()
            return Solution("optimal", x, 0.5 * red.value(x))

    try:
        p = random_problem(1)
        res = Liar().solve(p)
        assert res.status == "feasible" and res.info["reported_status"] == "optimal"
        assert res.gap == pytest.approx(0.5)
    finally:
        from fqopt.solvers._registry import SOLVERS
        SOLVERS.unregister("_liar")


def test_quantile_follows_fairquant_shares_and_scores():
    # ten single-layer units, equal sizes: shares count units, the least important get 2 bits
    U = 10
    scores = np.arange(U)[::-1].astype(float)          # unit 0 most important
    p = AllocationProblem(costs=np.ones((U, 1, 3)), bits=[2, 4, 8], sizes=np.full(U, 5),
                          budget=8.0, scores=scores)
    res = solve(p, "quantile", match_budget=False)
    np.testing.assert_array_equal(res.assignment, [8, 8, 8, 8, 4, 4, 4, 4, 2, 2])
    assert res.info["shares"] == {2: 0.2, 4: 0.4, 8: 0.4}
    # matched bits: tilted shares meet a tighter budget, the ranking unchanged
    tight = solve(p.with_budget(4.0), "quantile")
    assert tight.budget_used <= 4.0
    order = np.argsort(-scores)
    assert np.all(np.diff(tight.assignment[order]) <= 0)
    assert solve(p.with_budget(4.0), "quantile", match_budget=False).status == "infeasible"
    # the tilt is numerically stable at its extremes: all lowest / all highest bits
    assert solve(p.with_budget(2.0), "quantile").assignment.tolist() == [2] * U
    assert solve(p.with_budget(8.0), "quantile").assignment.tolist() == [8] * U
    no_low = solve(p.with_budget(2.5), "quantile", shares=(0.0, 0.5, 0.5))
    assert no_low.status == "infeasible" and "at 4 bits" in no_low.message
    with pytest.raises(UserError, match="sum to 1"):
        get_solver("quantile", shares=(0.5, 0.6, 0.1))
    with pytest.raises(UserError, match="not candidates"):
        solve(AllocationProblem(costs=np.ones((2, 1, 2)), bits=[2, 3], sizes=[1, 1],
                                budget=3), "quantile")


def test_quantile_reads_scores_from_table_meta():
    table = channel_table(pinned={})
    n = len(table.units)
    scores = np.random.default_rng(0).random(n)
    p = AllocationProblem.from_table(channel_table(pinned={}, scores=scores.tolist()),
                                     budget=8.0)
    res = solve(p, "quantile", match_budget=False)
    least = np.argsort(scores)[: int(0.2 * n)]
    assert np.all(res.assignment[least] == 2)
    as_dict = {u: float(s) for u, s in zip(table.units, scores)}
    q = AllocationProblem.from_table(channel_table(pinned={}, scores=as_dict), budget=8.0)
    np.testing.assert_array_equal(solve(q, "quantile", match_budget=False).assignment,
                                  res.assignment)
    with pytest.raises(UserError, match="scores"):
        AllocationProblem.from_table(channel_table(pinned={}, scores=[1.0, 2.0]), budget=8.0)


def test_repair_budget_steps_down_until_the_budget_holds():
    from fqopt.solvers._lagrange import repair_budget

    for seed in range(10):
        p = random_problem(300 + seed, max_units=6, budget_fraction=0.3, ties=True)
        red = p.reduced()
        start = red.max_choice()
        x = repair_budget(red, start)
        assert red.is_feasible(x)
        assert np.all(x <= start)
        # greedy, not optimal, but never below the true optimum
        assert red.value(x) >= brute_force(p)[0] - 1e-12


@pytest.mark.parametrize("objective", ["worst", "balanced", "blend:0.5", "cvar:0.34"])
def test_lagrange_certifies_zero_cost_blocks_and_a_loose_budget(objective):
    # the shape of a random-init ResNet's Fisher table: most units cost nothing (zero-init last
    # BatchNorm of each block), the rest cost ~1e-9 in one group only, and the budget does not
    # bind; the dual optimum is a vertex of W where whole blocks of units tie
    rng = np.random.default_rng(0)
    U, G = 3000, 6
    bits = np.array([2, 3, 4, 6, 8])
    sizes = rng.integers(9, 600, size=U)
    costs = (sizes[:, None, None] * 4.0 ** -bits[None, None, :]
             * rng.lognormal(0, 1, (U, G, 1)) * 1e-9)
    role = rng.random(U)
    costs[role < 0.8] = 0.0
    for u in np.flatnonzero(role >= 0.8):
        costs[u, np.arange(G) != rng.integers(G)] = 0.0
    p = AllocationProblem(costs=costs, bits=bits, sizes=sizes, budget=4.0, objective=objective,
                          group_counts=np.full(G, 10))
    res = solve(p, "lagrange")
    best = p.evaluate(np.full(U, 8))  # costs fall with bits: max bits is optimal
    assert res.status == "optimal" and res.gap <= 1e-6
    assert res.objective == pytest.approx(best, rel=1e-9)
    assert res.budget_used <= 4.0


# ------------------------------------------------------------------------- relaxed pins
def test_relax_pins_turns_pins_into_bounds_and_matches_brute_force():
    # two pinned units at 8 bits hold most of the weights: a 3-bit budget is out of reach
    costs = np.random.default_rng(3).lognormal(0, 1, (4, 2, 3)) * 4.0 ** -np.array([2, 4, 8])
    p = AllocationProblem(costs=costs, bits=[2, 4, 8], sizes=[50, 10, 10, 30], budget=3.0,
                          pins={0: 8, 3: 8}, unit_names=["stem", "a", "b", "head"])
    assert p.min_budget() == pytest.approx((50 * 8 + 20 * 2 + 30 * 8) / 100)
    assert not p.is_budget_feasible
    floor = p.relax_pins(4)
    assert floor.pins is None and floor.allowed[0].tolist() == [False, True, True]
    assert floor.allowed[1].tolist() == p.allowed[1].tolist()       # free units unchanged
    assert floor.min_budget() == pytest.approx((50 * 4 + 20 * 2 + 30 * 4) / 100)
    assert floor.provenance["meta"]["pins_relaxed"] == {"stem": 4, "head": 4}
    assert p.provenance == {}                                         # the original is kept
    free = p.relax_pins(None)
    assert free.allowed.all() and free.min_budget() == pytest.approx(2.0)
    # the relaxed problems are solved exactly: optimum = brute force over their bounds
    for q, budget in ((floor, 3.6), (free, 3.0), (free, 2.4)):
        q = q.with_budget(budget)
        want, _ = brute_force(q)
        res = solve(q, "lagrange")
        assert res.ok and res.objective == pytest.approx(want, rel=1e-6)
        a = np.asarray(res.assignment)
        assert (a * q.sizes).sum() / q.sizes.sum() <= budget + 1e-9
        if q is floor:
            assert a[0] >= 4 and a[3] >= 4
    # a pin below the floor keeps its own bits as the floor; bounds never rise above the pin
    low = AllocationProblem(costs=costs, bits=[2, 4, 8], sizes=[50, 10, 10, 30], budget=3.0,
                            pins={0: 2, 3: 4})
    r = low.relax_pins(4)
    assert r.allowed[0].tolist() == [True, False, False]
    assert r.allowed[3].tolist() == [False, True, False]
    with pytest.raises(UserError, match="floor 3 is not a candidate"):
        p.relax_pins(3)
    unpinned = AllocationProblem(costs=costs, bits=[2, 4, 8], sizes=[50, 10, 10, 30],
                                 budget=3.0)
    assert unpinned.relax_pins(4) is unpinned


def test_relax_pins_names_layers_of_a_table():
    table = channel_table()
    p = AllocationProblem.from_table(table, budget=2.0)
    assert not p.is_budget_feasible
    q = p.relax_pins(4)
    assert q.provenance["meta"]["pins_relaxed"] == {"conv1": 4, "fc": 4}
    res = solve(q.with_budget(max(2.0, q.min_budget())), "lagrange")
    plan = res.to_plan()
    assert plan.meta["pins_relaxed"] == {"conv1": 4, "fc": 4}
    assert plan.layer_bits()["conv1"].min() >= 4 and plan.layer_bits()["fc"].min() >= 4
