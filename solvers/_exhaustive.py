"""``exhaustive``: brute force over every allowed choice; the oracle of the solver test suite."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from fqopt.errors import UserError
from fqopt.solvers._registry import Solver, register_solver
from fqopt.solvers._result import Solution


@register_solver("exhaustive")
@dataclass
class ExhaustiveSolver(Solver):
    """Enumerate all ``Π_v |allowed_v|`` assignments of the reduced problem in chunks.

    max_combinations: refuse larger instances (a UserError naming the count).
    """

    max_combinations: int = 2_000_000
    chunk: int = 1 << 15

    exact = True

    def _solve(self, red, deadline) -> Solution:
        options = [np.flatnonzero(row) for row in red.allowed]
        radix = np.array([len(o) for o in options], dtype=np.int64)
        total = math.prod(int(r) for r in radix)
        if total > self.max_combinations:
            raise UserError(f"exhaustive search over {total:,} assignments exceeds its limit of "
                            f"{self.max_combinations:,}; use lagrange, cpsat or milp")
        V = red.num_units
        # mixed-radix digits of the enumeration index; unit 0 varies slowest
        stride = np.ones(V, dtype=np.int64)
        for v in range(V - 2, -1, -1):
            stride[v] = stride[v + 1] * radix[v + 1]
        table = np.full((V, int(radix.max())), -1, dtype=np.int64)
        for v, o in enumerate(options):
            table[v, :len(o)] = o
        best_val, best_choice, done = np.inf, None, 0
        for start in range(0, total, self.chunk):
            if deadline is not None and time.perf_counter() > deadline:
                break
            idx = np.arange(start, min(total, start + self.chunk), dtype=np.int64)
            digits = (idx[:, None] // stride[None, :]) % radix[None, :]
            choice = table[np.arange(V)[None, :], digits]                    # [B, V]
            C = np.broadcast_to(red.base_costs, (idx.size, red.costs.shape[1])).copy()
            used = np.full(idx.size, red.base_usage, dtype=np.int64)
            for v in range(V):
                C += red.costs[v][:, choice[:, v]].T
                used += red.usage[v, choice[:, v]]
            f = np.where(used <= red.cap, red.objective(C), np.inf)
            j = int(np.argmin(f))
            if f[j] < best_val:
                best_val, best_choice = float(f[j]), choice[j].copy()
            done += idx.size
        info = {"assignments": total, "enumerated": done}
        if done < total:
            info["timed_out"] = True
            if best_choice is None:
                return Solution("timeout", None, None, info)
            return Solution("feasible", best_choice, None, info)
        if best_choice is None:  # pragma: no cover - the budget was checked before
            return Solution("infeasible", None, None, info)
        return Solution("optimal", best_choice, best_val, info)
