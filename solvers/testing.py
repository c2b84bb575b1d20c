"""Shared conformance fixtures: random tiny allocation problems and an independent brute force.

Every back-end runs the same suite (``tests/test_solver_conformance.py``) against
:func:`brute_force`, which enumerates the *unreduced* units with :meth:`AllocationProblem.evaluate`
and :meth:`AllocationProblem.is_feasible`, so it checks the tie/pin reduction too.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from fqopt.solvers._problem import AllocationProblem

#: one of each objective family
TEST_OBJECTIVES = ("worst", "balanced", "mean", "blend:0.3", "cvar:0.5")
ALL_BITS = (2, 3, 4, 6, 8)


def random_problem(seed: int, *, objective: str = "worst", budget_kind: str = "avg_bits",
                   max_units: int = 6, max_groups: int = 3, max_bits: int = 3,
                   pins: bool = False, ties: bool = False, bounds: bool = False,
                   negative: bool = False, forbid: bool = False,
                   budget_fraction: float | None = None, zero: bool = False,
                   equal: bool = False, scale: float = 1.0) -> AllocationProblem:
    """A random problem with at most ``max_units`` units, ``max_groups`` groups and ``max_bits``
    candidate bit-widths; costs decrease with bits like size·4^(−b) (optionally shifted
    negative), the budget lies between the smallest and largest feasible value.

    Degenerate shapes seen in real profiled tables: ``zero`` gives about a third of the units no
    cost at any bit-width (timm zero-initialises the last BatchNorm of each residual block) and
    another third costs in one group only; ``equal`` copies one unit's costs onto another and
    makes one unit cost the same at every bit-width (exact ties); ``scale`` multiplies every
    cost (1e-9: the magnitude of Fisher costs of a random-init ResNet); ``budget_fraction`` 1
    puts the budget at the largest feasible value, where it does not bind."""
    rng = np.random.default_rng(seed)
    U = int(rng.integers(2, max_units + 1))
    G = int(rng.integers(1, max_groups + 1))
    K = int(rng.integers(2, max_bits + 1))
    bits = np.sort(rng.choice(ALL_BITS, size=K, replace=False))
    sizes = rng.integers(1, 50, size=U)
    noise = 4.0 ** (-bits.astype(float))[None, None, :] * rng.lognormal(0, 0.7, (U, G, K))
    costs = sizes[:, None, None] * np.sort(noise, axis=2)[:, :, ::-1]
    if negative:
        costs = costs - rng.uniform(0, costs.mean(), size=(U, G, 1))
    if zero:
        role = rng.integers(0, 3, size=U)
        costs[role == 0] = 0.0
        for u in np.flatnonzero(role == 1):
            keep = int(rng.integers(G))
            costs[u, np.arange(G) != keep, :] = 0.0
    if equal and U >= 2:
        a, b = rng.choice(U, size=2, replace=False)
        costs[b] = costs[a]
        costs[int(rng.integers(U)), :, :] = costs[int(rng.integers(U)), :, :1]
    costs = costs * scale
    if forbid:
        u = int(rng.integers(U))
        costs[u, int(rng.integers(G)), int(rng.integers(K))] = np.inf
        if np.isinf(costs[u]).any(axis=0).all():
            costs[u, :, 0] = 1.0
    kw = {}
    allowed = np.isfinite(costs).all(axis=1)
    if bounds:
        lo = np.where(rng.random(U) < 0.3, bits[min(1, K - 1)], 0)
        hi = np.where(rng.random(U) < 0.3, bits[-2], 99)
        within = (bits[None, :] >= lo[:, None]) & (bits[None, :] <= hi[:, None])
        relax = ~(allowed & within).any(axis=1)     # keep every unit solvable
        lo[relax], hi[relax] = 0, 99
        allowed &= (bits[None, :] >= lo[:, None]) & (bits[None, :] <= hi[:, None])
        kw.update(min_bits=lo, max_bits=hi)
    if pins:
        u = int(rng.integers(U))
        kw["pins"] = {u: int(rng.choice(bits[allowed[u]]))}
        allowed[u] = bits == kw["pins"][u]
    if ties and U >= 3:
        pairs = [(a, b) for a in range(U) for b in range(a + 1, U)
                 if (allowed[a] & allowed[b]).any()]
        if pairs:
            kw["ties"] = [list(pairs[int(rng.integers(len(pairs)))])]
    macs = rng.integers(0, 1000, size=U) if budget_kind == "bops" else None
    problem = AllocationProblem(costs=costs, bits=bits, sizes=sizes, budget=0.0,
                                budget_kind=budget_kind, objective=objective,
                                group_counts=rng.integers(1, 100, size=G), macs=macs,
                                size_overhead=int(rng.integers(0, 100)), **kw)
    lo, hi = problem.min_budget(), problem.max_budget()
    t = rng.uniform(0.1, 0.9) if budget_fraction is None else budget_fraction
    value = lo + t * (hi - lo)
    if budget_kind != "avg_bits":
        value = math.floor(value)
    return problem.with_budget(value)


def brute_force(problem: AllocationProblem) -> tuple[float | None, np.ndarray | None]:
    """The optimal objective and one optimal assignment, by enumerating every unit's candidate
    bits (tiny problems only); ``(None, None)`` when no assignment is feasible."""
    best_val, best = None, None
    for combo in itertools.product(problem.bits.tolist(), repeat=problem.num_units):
        a = np.array(combo, dtype=np.int64)
        if not problem.is_feasible(a):
            continue
        val = problem.evaluate(a)
        if best_val is None or val < best_val:
            best_val, best = val, a
    return best_val, best


def brute_min_budget(problem: AllocationProblem) -> float:
    """The smallest budget value any pin/tie/bound-respecting assignment needs, by enumeration."""
    least = None
    for combo in itertools.product(problem.bits.tolist(), repeat=problem.num_units):
        a = np.array(combo, dtype=np.int64)
        if not problem.with_budget(1e18).is_feasible(a):
            continue
        used = problem.budget_used(a)
        least = used if least is None else min(least, used)
    return least
